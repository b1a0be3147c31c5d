"""When to transcribe: early drafts at a pause, one committed draft per segment, off the capture path.

The VAD emits a :class:`~edge_agent.vad.Pause` ``pause_ms`` after speech stops and the finished
:class:`~edge_agent.vad.SpeechSegment` only ``hangover_ms`` after it. The drafter, on the ASR
thread, turns those events into captions:

1. **At a pause** it transcribes the segment so far and shows it at once, under the segment's own
   ``segment_id``. With ``early_window_s`` set (the default) the encoder takes a short window
   (~3x faster than the full 30 s one, a little less accurate); unset, the full window.
2. **When the segment is finished** it reuses the pause's draft when it was made with the full
   window and the segment's ``revision`` equals the pause's (only non-speech was added since: no
   second inference). Otherwise (short-window draft, or speech resumed) the whole segment is
   transcribed with the full window, so the committed draft always has full accuracy. Segment and
   draft are then committed to the outbox, and the caption is updated when its text or seq changed.

The full-window pass is left to the end of the segment rather than run right after the early
draft: a pause inside an utterance then costs one short-window inference (~80 ms on 2 cores), not
~300 ms during which the end of the utterance would wait for the ASR thread.

A pause whose segment already has a newer event waiting is skipped (the machine is behind). A seq
is known only once the outbox commits the segment, so an early draft is shown with the seq the
outbox expects next (the commit corrects it). A failed transcription is logged and the segment is
committed without a draft: captioning one segment must never stop the agent.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contracts import Transcript
from edge_agent.asr import SpeechRecognizer
from edge_agent.vad import Pause, SpeechSegment, VadEvent

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

Commit = Callable[[SpeechSegment, Transcript | None], tuple[int, str]]


class CaptionView(Protocol):
    """What the drafter needs of :class:`edge_agent.captions.CaptionSink`."""

    def draft(self, segment_id: str, seq: int, started_at: float, ended_at: float, transcript: Transcript) -> None:
        ...


@dataclass
class _Draft:
    revision: int
    transcript: Transcript
    full: bool  # made with a window at least as wide as the commit window (good enough to commit)


@dataclass
class _Shown:
    text: str
    seq: int


class Drafter:
    """Runs on the ASR thread: VAD events in, captions shown and segments committed out."""

    def __init__(
        self,
        asr: SpeechRecognizer,
        captions: CaptionView,
        commit: Commit,
        *,
        early_window_s: float | None = 10.0,
        commit_window_s: float | None = None,
        expected_seq: Callable[[], int] | None = None,
        on_inference: Callable[[float, float], None] | None = None,
    ) -> None:
        self.asr = asr
        self.captions = captions
        self.commit = commit
        self.early_window_s = early_window_s if asr.windowed else None
        self.commit_window_s = commit_window_s if asr.windowed else None
        self.expected_seq = expected_seq
        self.on_inference = on_inference
        self.counters: Counter[str] = Counter()
        self._drafts: dict[str, _Draft] = {}
        self._shown: dict[str, _Shown] = {}
        self._backlog: deque[object] = deque()

    # --- the loop ---------------------------------------------------------------------------

    def run(self, events: queue.Queue[object], end: object) -> None:
        """Handle events from ``events`` until ``end`` comes out of it."""
        while True:
            if not self._backlog:
                self._backlog.append(events.get())
            self._take(events)
            item = self._backlog.popleft()
            if item is end:
                return
            if not isinstance(item, Pause | SpeechSegment):
                log.error("drafter got %r, not a VAD event; ignored", type(item).__name__)
                continue
            try:
                self.handle(item, lambda: self._take(events))
            except Exception:  # one bad segment must not stop captioning
                log.exception("handling a %s event failed", type(item).__name__)
                self.counters["errors"] += 1

    def _take(self, events: queue.Queue[object]) -> deque[object]:
        """Move what is waiting in ``events`` to the backlog; the backlog."""
        while True:
            try:
                self._backlog.append(events.get_nowait())
            except queue.Empty:
                return self._backlog

    def _newer_waiting(self, segment_id: str, waiting: Callable[[], deque[object]] | None) -> bool:
        if waiting is None:
            return False
        return any(
            isinstance(e, Pause | SpeechSegment) and _segment(e).segment_id == segment_id for e in waiting()
        )

    # --- one event --------------------------------------------------------------------------

    def handle(self, event: VadEvent, waiting: Callable[[], deque[object]] | None = None) -> None:
        """Handle one event; ``waiting()`` gives the events queued behind it (to skip stale work)."""
        if isinstance(event, Pause):
            self._pause(event.segment, waiting)
        else:
            self._finished(event)

    def _pause(self, speech: SpeechSegment, waiting: Callable[[], deque[object]] | None) -> None:
        sid = speech.segment_id
        if self._newer_waiting(sid, waiting):
            self.counters["pauses_skipped"] += 1
            return
        kept = self._drafts.get(sid)
        if kept is not None and kept.revision == speech.revision:
            return  # already drafted this audio
        early = self.early_window_s
        transcript = self._transcribe(speech, early)
        good_enough = early is None or (self.commit_window_s is not None and early >= self.commit_window_s)
        self._drafts[sid] = _Draft(speech.revision, transcript, full=good_enough)
        self.counters["early_drafts"] += 1
        seq = self.expected_seq() if self.expected_seq is not None else -1
        self._show(speech, seq, transcript)

    def _finished(self, speech: SpeechSegment) -> None:
        sid = speech.segment_id
        kept = self._drafts.pop(sid, None)
        transcript: Transcript | None
        if kept is not None and kept.full and kept.revision == speech.revision:
            transcript = kept.transcript
            self.counters["drafts_reused"] += 1
        else:
            if kept is not None:
                self.counters["drafts_replaced"] += 1
            try:
                transcript = self._transcribe(speech, self.commit_window_s)
            except Exception:  # the segment is still committed: with the early draft, or none
                log.exception("transcribing segment %s failed; committed with %s", sid,
                              "its early draft" if kept else "no draft")
                self.counters["errors"] += 1
                transcript = kept.transcript if kept is not None else None
        seq, committed_id = self.commit(speech, transcript)
        self.counters["committed"] += 1
        if committed_id != sid and sid in self._shown:
            log.warning("segment %s was committed as %s: its early caption stays under the first id",
                        sid, committed_id)
        if transcript is not None:
            self._show(speech, seq, transcript, segment_id=committed_id)
        self._shown.pop(sid, None)
        self._shown.pop(committed_id, None)

    # --- inside -----------------------------------------------------------------------------

    def _transcribe(self, speech: SpeechSegment, window_s: float | None) -> Transcript:
        audio = np.frombuffer(speech.pcm, dtype=np.int16).astype(np.float32) / 32768.0
        started = time.monotonic()
        transcript = self.asr.transcribe(audio, window_s=window_s)
        if self.on_inference is not None:
            self.on_inference(audio.size / SAMPLE_RATE, time.monotonic() - started)
        self.counters["inferences"] += 1
        return transcript

    def _show(self, speech: SpeechSegment, seq: int, transcript: Transcript, segment_id: str | None = None) -> None:
        """Show (or update) the caption unless exactly this text and seq is already shown."""
        sid = segment_id or speech.segment_id
        text = transcript.text.strip()
        shown = self._shown.get(sid)
        if shown is not None and shown.text == text and shown.seq == seq:
            return
        self.captions.draft(sid, seq, speech.started_at, speech.ended_at, transcript)
        self._shown[sid] = _Shown(text, seq)


def _segment(event: VadEvent) -> SpeechSegment:
    return event.segment if isinstance(event, Pause) else event
