"""Segment audio in the store, so the dashboard can play a segment back.

The reconciler keeps each segment's audio as the device sent it (Ogg Opus by default: a few kB a
second), once (the first copy; a redelivered segment stores nothing), in the database or, with
``audio_dir``, in a file ``<audio_dir>/<agent_id>/<segment_id>.<ext>`` whose path the row keeps
(written before the row). :meth:`AudioRecords.purge_audio` deletes what is older than the
retention. :meth:`AudioRecords.segment_audio` gives it back playable: Ogg Opus and FLAC as they are,
raw PCM16 wrapped in a WAV header.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select

from cloud.tables import SegmentKey, by_key, segment_audio
from contracts import Segment

log = logging.getLogger(__name__)

MEDIA = {"opus": ("audio/ogg", "ogg"), "flac": ("audio/flac", "flac"), "pcm_s16le": ("audio/wav", "wav")}


class AudioRecords:
    """The audio half of :class:`cloud.store.Store` (a mixin: it uses the store's engines)."""

    engine: Engine
    _reader: Engine
    _insert: Any

    def store_audio(self, segment: Segment, audio_dir: Path | None = None) -> bool:
        """Keep ``segment``'s audio (the first copy); False if it was kept before."""
        key = (segment.agent_id, segment.segment_id)
        with self._reader.connect() as conn:
            if conn.execute(select(segment_audio.c.segment_id).where(by_key(segment_audio, key))).first():
                return False
        audio = segment.audio
        path = None
        if audio_dir is not None:
            path = audio_dir / segment.agent_id / f"{segment.segment_id}.{MEDIA[audio.codec][1]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(audio.data)
            os.replace(partial, path)
        row = {
            "agent_id": segment.agent_id,
            "segment_id": segment.segment_id,
            "codec": audio.codec,
            "sample_rate": audio.sample_rate,
            "channels": audio.channels,
            "data": None if path else audio.data,
            "path": str(path) if path else None,
            "bytes": len(audio.data),
            "stored_at": time.time(),
        }
        with self.engine.begin() as conn:
            insert = self._insert(segment_audio).values(**row).on_conflict_do_nothing()
            return conn.execute(insert.returning(segment_audio.c.segment_id)).first() is not None

    def has_audio(self, key: SegmentKey) -> bool:
        """Whether a segment's audio is kept (without reading it)."""
        with self._reader.connect() as conn:
            return conn.execute(select(segment_audio.c.bytes).where(by_key(segment_audio, key))).first() is not None

    def segment_audio(self, key: SegmentKey) -> tuple[str, bytes] | None:
        """``(media type, bytes)`` of a segment's audio, playable in a browser; None if not kept."""
        query = select(segment_audio).where(by_key(segment_audio, key))
        with self._reader.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        try:
            data = bytes(row.data) if row.data is not None else Path(row.path).read_bytes()
        except OSError as exc:
            log.warning("the audio of segment %s of %s is gone: %s", key[1], key[0], exc)
            return None
        if row.codec == "pcm_s16le":
            data = _wav(data, int(row.sample_rate), int(row.channels))
        return MEDIA[row.codec][0], data

    def purge_audio(self, stored_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` audio rows (and files) stored before ``stored_before``; how many."""
        query = (
            select(segment_audio.c.agent_id, segment_audio.c.segment_id, segment_audio.c.path)
            .where(segment_audio.c.stored_at < stored_before)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            old = conn.execute(query).all()
            for r in old:
                conn.execute(delete(segment_audio).where(by_key(segment_audio, (r.agent_id, r.segment_id))))
        for r in old:
            if r.path:
                Path(r.path).unlink(missing_ok=True)
        return len(old)


def _wav(pcm: bytes, rate: int, channels: int) -> bytes:
    import numpy as np
    import soundfile

    out = io.BytesIO()
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    soundfile.write(out, frames, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()
