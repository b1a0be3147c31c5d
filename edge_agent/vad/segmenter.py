"""The segmenter: one state machine that cuts a stream of PCM16 into speech segments, whatever the engine.

Each frame is classified as speech or not by an engine, a subclass registered in :data:`ENGINES`
by its ``type_key`` (``webrtc``: :mod:`edge_agent.vad.webrtc`; ``silero``: :mod:`edge_agent.vad.silero`).
The same state machine then cuts segments for all of them, timed by one :class:`VadTiming`:

- A segment opens at the first voiced frame and carries the ``pre_roll_ms`` of audio before it,
  so onsets are never clipped.
- ``pause_ms`` of non-speech after speech emits a :class:`Pause` carrying the segment so far, well
  before the segment closes, so a caption can be drafted at once. Another pause is emitted only
  after speech resumed (``RESUME_FRAMES`` voiced frames since the last pause), which also raises
  the segment's ``revision``: a closed segment with the revision of a pause holds that pause's
  audio plus non-speech only, so the pause's draft is the segment's draft.
- It closes once the trailing ``hangover_ms`` window holds almost no voiced frames (a stray voiced
  frame in noise does not keep it open); the hangover audio stays in the segment. Segments with
  less than ``min_speech_ms`` of voiced frames are dropped and counted in ``dropped_short`` (no
  pause is emitted for them either).
- A segment reaching ``max_segment_s`` is cut at the quietest frame of its last ~2 s and goes on
  as a new segment (a new ``segment_id``), so no audio is lost; the cut piece gets a new revision.

Times are capture times: each ``feed`` gives the capture time of its first sample. The segmenter
keeps one time anchor and counts samples from it, so how a stream is chunked does not change the
segments; a chunk whose time jumps by more than a frame from the expected one moves the anchor.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from contracts import new_segment_id
from runtime.plugins import Registry

if TYPE_CHECKING:
    from edge_agent.settings import VadSettings

logger = logging.getLogger(__name__)

RESUME_FRAMES = 2  # voiced frames after a pause that count as speech resuming
_OFFSET_VOICED_FRACTION = 0.1  # the segment ends when the hangover window is at most this voiced
_CUT_SEARCH_S = 2.0


@dataclass(frozen=True)
class SpeechSegment:
    """One utterance: 16 kHz mono PCM16 audio and the capture times of its first and past-last sample.

    ``segment_id`` is chosen when the segment opens (the outbox and the captions use it);
    ``revision`` counts how often speech resumed after a pause (see the module).
    """

    pcm: bytes
    started_at: float
    ended_at: float
    segment_id: str = field(default_factory=new_segment_id, compare=False)
    revision: int = field(default=0, compare=False)

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at


@dataclass(frozen=True)
class Pause:
    """Speech paused: the open segment so far. Provisional: the segment may still grow."""

    segment: SpeechSegment


VadEvent = SpeechSegment | Pause


@dataclass(frozen=True)
class VadTiming:
    """When segments open, pause, close and are cut (see the module); the same for every engine.

    The defaults are the agent's ``vad`` settings' defaults; :meth:`from_settings` builds it from them.
    """

    pre_roll_ms: int = 300
    """Audio kept before the first voiced frame."""
    hangover_ms: int = 600
    """Trailing window that must be (almost) silent for the segment to close."""
    min_speech_ms: int = 250
    """Segments with less voiced audio are dropped."""
    max_segment_s: float = 28.0
    """Longer speech is cut (Whisper's window is 30 s)."""
    pause_ms: int = 90
    """Silence after speech that emits a :class:`Pause` (0: none)."""

    def __post_init__(self) -> None:
        if self.pre_roll_ms < 0:
            raise ValueError(f"pre_roll_ms must be >= 0, got {self.pre_roll_ms!r}")
        if self.min_speech_ms < 0:
            raise ValueError(f"min_speech_ms must be >= 0, got {self.min_speech_ms!r}")
        if self.pause_ms < 0 or self.pause_ms >= self.hangover_ms:
            raise ValueError(f"pause_ms must be >= 0 (0: no pauses) and below hangover_ms, got {self.pause_ms!r}")

    @classmethod
    def from_settings(cls, settings: VadSettings) -> VadTiming:
        """The timing part of the agent's ``vad`` settings (the same names)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_TIMING = VadTiming()


@dataclass
class _Frame:
    pcm: bytes
    t: float  # capture time of its first sample
    voiced: bool
    energy: float


class Segmenter(ABC):
    """The streaming state machine; an engine subclass decides which frames are speech (``_is_speech``).

    An engine declares its ``type_key`` (the ``vad.engine`` setting that selects it), registers
    with ``@ENGINES.register`` and builds itself from the settings in :meth:`from_settings`.
    """

    type_key: ClassVar[str] = ""

    def __init__(self, *, sample_rate: int, frame_samples: int, timing: VadTiming = DEFAULT_TIMING) -> None:
        frame_ms = 1000 * frame_samples / sample_rate
        if timing.hangover_ms < frame_ms:
            raise ValueError(f"hangover_ms must be at least one frame ({frame_ms:g} ms), got {timing.hangover_ms!r}")
        max_ms = timing.max_segment_s * 1000
        if max_ms < 2 * (timing.pre_roll_ms + frame_ms) or max_ms < 4 * frame_ms:
            raise ValueError(
                f"max_segment_s ({timing.max_segment_s!r}) must be at least twice pre_roll_ms + one frame "
                f"({2 * (timing.pre_roll_ms + frame_ms):g} ms)"
            )
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.timing = timing

        self._frame_samples = frame_samples
        self._frame_bytes = frame_samples * 2
        self._hangover_frames = max(1, round(timing.hangover_ms / frame_ms))
        self._pause_frames = max(1, round(timing.pause_ms / frame_ms)) if timing.pause_ms else 0
        self._max_frames = max(2, int(max_ms // frame_ms))
        self._cut_search_frames = max(1, min(round(_CUT_SEARCH_S * 1000 / frame_ms), self._max_frames // 2))
        self._min_voiced_frames = int(np.ceil(timing.min_speech_ms / frame_ms))

        self._pre_roll: deque[_Frame] = deque(maxlen=max(0, round(timing.pre_roll_ms / frame_ms)))
        self._active: list[_Frame] = []
        self._recent_voiced: deque[bool] = deque(maxlen=self._hangover_frames)
        self._continued = False  # the open segment continues one cut at max_segment_s
        self._segment_id = ""
        self._revision = 0
        self._voiced = 0  # voiced frames in the open segment
        self._silent_run = 0  # non-speech frames since the last voiced one
        self._paused = False  # a pause was emitted and speech has not resumed since
        self._resumed = 0  # voiced frames since that pause

        self._buffer = b""
        self._anchor_t: float | None = None
        self._next_index = 0  # sample index (from the anchor) of the first byte in _buffer

        self.frames_seen = 0
        self.segments_emitted = 0
        self.segments_cut = 0
        self.dropped_short = 0
        self.pauses = 0

    @classmethod
    def from_settings(cls, settings: VadSettings, sample_rate: int) -> Segmenter:
        """This engine, built from the agent's ``vad`` settings (an engine in :data:`ENGINES` overrides it)."""
        raise NotImplementedError(f"{cls.__name__} is not built from settings")

    # --- public API -------------------------------------------------------------------------

    def process(self, pcm: bytes, t0: float) -> list[VadEvent]:
        """Add a chunk of any length; ``t0`` is the capture time of its first sample.

        Returns the pauses and the finished segments this chunk brought, in order.
        """
        if len(pcm) % 2:
            raise ValueError(f"PCM16 chunk must have an even number of bytes, got {len(pcm)}")
        self._place(t0)
        self._buffer += pcm
        out: list[VadEvent] = []
        n_frames = len(self._buffer) // self._frame_bytes
        for i in range(n_frames):
            data = self._buffer[i * self._frame_bytes : (i + 1) * self._frame_bytes]
            out.extend(self._step(data, self._next_index + i * self._frame_samples))
        self._buffer = self._buffer[n_frames * self._frame_bytes :]
        self._next_index += n_frames * self._frame_samples
        return out

    def feed(self, pcm: bytes, t0: float) -> list[SpeechSegment]:
        """Like :meth:`process`, but only the finished segments."""
        return [e for e in self.process(pcm, t0) if isinstance(e, SpeechSegment)]

    def flush(self) -> list[SpeechSegment]:
        """End of stream: close the open segment (a trailing partial frame is padded with silence)."""
        out: list[SpeechSegment] = []
        if self._buffer:
            tail = len(self._buffer) // 2
            data = self._buffer + b"\x00" * (self._frame_bytes - len(self._buffer))
            out.extend(e for e in self._step(data, self._next_index, keep_samples=tail) if isinstance(e, SpeechSegment))
            self._next_index += tail
            self._buffer = b""
        if self._active:
            out.extend(self._close(self._active))
        self._reset_state()
        return out

    # --- the engine -------------------------------------------------------------------------

    @abstractmethod
    def _is_speech(self, data: bytes, samples: np.ndarray) -> bool:
        """Whether one frame (its bytes, and its samples as float64) is speech."""

    def _reset_engine(self) -> None:  # noqa: B027 - an optional hook, not every engine carries state
        """Forget what the engine carries between frames (end of stream)."""

    # --- time keeping ----------------------------------------------------------------------

    def _time(self, index: int) -> float:
        assert self._anchor_t is not None
        return self._anchor_t + index / self.sample_rate

    def _place(self, t0: float) -> None:
        """Keep one anchor while chunks arrive where expected; move it when capture time jumps."""
        buffered = len(self._buffer) // 2
        if self._anchor_t is None:
            self._anchor_t, self._next_index = float(t0), 0
            return
        expected = self._time(self._next_index + buffered)
        if abs(t0 - expected) > self.frame_ms / 1000:
            logger.debug("capture time jumped by %.3f s; re-anchoring", t0 - expected)
            # Re-anchor so the new chunk's first sample lands at t0; buffered samples come just before.
            new_index = self._next_index + buffered
            self._anchor_t = float(t0) - new_index / self.sample_rate

    # --- the state machine -----------------------------------------------------------------

    def _step(self, data: bytes, index: int, keep_samples: int | None = None) -> list[VadEvent]:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
        voiced = self._is_speech(data, samples)
        if keep_samples is not None:
            data = data[: keep_samples * 2]
        frame = _Frame(data, self._time(index), voiced, float(np.mean(samples**2)))
        self.frames_seen += 1

        if not self._active:
            if not voiced:
                self._pre_roll.append(frame)
                return []
            self._open([*self._pre_roll, frame])
            self._pre_roll.clear()
            self._recent_voiced.clear()
            self._recent_voiced.append(True)
            return self._cut_if_long()

        self._active.append(frame)
        self._recent_voiced.append(voiced)
        if voiced:
            self._voiced += 1
            self._silent_run = 0
            if self._paused:
                self._resumed += 1
                if self._resumed >= RESUME_FRAMES:
                    self._paused = False
                    self._revision += 1
        else:
            self._silent_run += 1
        if (
            len(self._recent_voiced) == self._hangover_frames
            and sum(self._recent_voiced) <= _OFFSET_VOICED_FRACTION * self._hangover_frames
        ):
            frames, self._active = self._active, []
            self._recent_voiced.clear()
            return list(self._close(frames))
        if (
            self._pause_frames
            and not self._paused
            and self._silent_run >= self._pause_frames
            and (self._voiced >= self._min_voiced_frames or self._continued)
        ):
            self._paused, self._resumed = True, 0
            self.pauses += 1
            return [Pause(self._segment(self._active)), *self._cut_if_long()]
        return self._cut_if_long()

    def _open(self, frames: list[_Frame]) -> None:
        self._active = frames
        self._segment_id = new_segment_id()
        self._revision = 0
        self._voiced = sum(f.voiced for f in frames)
        self._silent_run = 0
        self._paused = False
        self._resumed = 0

    def _segment(self, frames: list[_Frame]) -> SpeechSegment:
        pcm = b"".join(f.pcm for f in frames)
        end = frames[-1].t + len(frames[-1].pcm) / 2 / self.sample_rate
        # Whole microseconds: one segment's end and the next one's start, the same instant, compare equal.
        return SpeechSegment(pcm, round(frames[0].t, 6), round(end, 6), self._segment_id, self._revision)

    def _cut_if_long(self) -> list[VadEvent]:
        if len(self._active) < self._max_frames:
            return []
        window = self._active[-self._cut_search_frames :]
        quietest = min(range(len(window)), key=lambda i: (window[i].energy, -i))
        cut = len(self._active) - len(window) + quietest + 1  # the quietest frame ends this piece
        head, tail = self._active[:cut], self._active[cut:]
        self.segments_cut += 1
        self._revision += 1  # the piece is not what any pause showed
        out: list[VadEvent] = list(self._close(head, force=True))
        silent_run = self._silent_run
        self._open(tail)
        self._silent_run = min(silent_run, len(tail))
        self._continued = True
        return out

    def _close(self, frames: list[_Frame], force: bool = False) -> list[SpeechSegment]:
        voiced = sum(f.voiced for f in frames)
        continued, self._continued = self._continued, False
        if not frames:
            return []
        if not (force or continued) and voiced < self._min_voiced_frames:
            self.dropped_short += 1
            logger.debug("dropped a segment with %d ms of speech", voiced * self.frame_ms)
            return []
        self.segments_emitted += 1
        return [self._segment(frames)]

    def _reset_state(self) -> None:
        self._pre_roll.clear()
        self._active = []
        self._recent_voiced.clear()
        self._continued = False
        self._paused = False
        self._reset_engine()


ENGINES: Registry[Segmenter] = Registry("VAD engine")
