"""The outbox's disk quota and what happens when it is full.

The quota counts the bytes of the stored messages (the SQLite file is kept close to that sum:
``auto_vacuum=INCREMENTAL`` returns freed pages to the file system). The room left is the smaller
of ``max_bytes`` and what the disk can still give while keeping ``min_free_disk_mb`` free.

Policies when a new segment does not fit:

``drop_oldest_audio`` (default)
    Every segment is still delivered, and every draft caption with it: the audio of the oldest
    segments that still carry audio is replaced by empty PCM (``pcm_s16le``, 0 bytes, a valid
    payload) until the new one fits. The cloud then has no audio to re-transcribe, so the worker
    returns an empty text and the reconciler keeps the edge draft as the final caption. If even the
    drafts alone fill the quota, the new segment loses its own audio, and failing that it is refused.
``refuse_new_audio``
    The stored audio is kept intact and new segments are refused (not stored, never delivered)
    until receipts make room; captioning goes on locally (terminal, SRT, JSONL).

Either way the counters ``dropped_audio_segments``, ``dropped_audio_bytes`` and
``refused_segments`` say what the policy did, the status flag ``quota_full`` is raised, and it
drops again by itself once the stored bytes fall below :data:`RESUME_FRACTION` of the room.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from contracts import Audio, DecodeError, Segment, decode, encode

log = logging.getLogger(__name__)

RESUME_FRACTION = 0.9
"""``quota_full`` drops once the stored bytes are below this fraction of the room."""


class FullPolicy(StrEnum):
    """What the outbox does with a segment that does not fit."""

    DROP_OLDEST_AUDIO = "drop_oldest_audio"
    REFUSE_NEW_AUDIO = "refuse_new_audio"


class OutboxFull(Exception):
    """A segment was refused by the quota policy; the message says why."""


@dataclass(frozen=True)
class Quota:
    """The outbox's limits and its policy when they are reached."""

    max_bytes: int
    policy: FullPolicy = FullPolicy.DROP_OLDEST_AUDIO
    min_free_disk_mb: float = 0.0

    def room(self, used: int, directory: Path) -> int:
        """How many message bytes the outbox may hold now, given ``used`` stored already."""
        if self.min_free_disk_mb <= 0:
            return self.max_bytes
        try:
            free = shutil.disk_usage(directory).free
        except OSError as exc:  # cannot tell: keep to max_bytes
            log.warning("cannot read free disk space of %s: %s", directory, exc)
            return self.max_bytes
        return max(0, min(self.max_bytes, used + free - int(self.min_free_disk_mb * 1024 * 1024)))


def strip_audio(payload: bytes) -> bytes | None:
    """The same segment message with empty audio, or None if ``payload`` is not a segment."""
    try:
        segment = decode(payload, Segment, max_bytes=len(payload) + 1)
    except DecodeError:
        return None
    # empty PCM16 whatever the codec was: no compressed codec has a valid empty stream
    empty = Audio(sample_rate=segment.audio.sample_rate, channels=segment.audio.channels, data=b"")
    return encode(segment.model_copy(update={"audio": empty}))
