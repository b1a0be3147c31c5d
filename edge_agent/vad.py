"""Cut a stream of 16 kHz mono PCM16 into speech segments with webrtcvad (no torch).

Each frame is classified by webrtcvad. A segment opens at the first voiced frame and carries the
``pre_roll_ms`` of audio before it, so onsets are never clipped. It closes once the trailing
``hangover_ms`` window holds almost no voiced frames (a stray voiced frame in noise does not keep
it open); the hangover audio stays in the segment. Segments with less than ``min_speech_ms`` of
voiced frames are dropped and counted in ``dropped_short``. A segment reaching ``max_segment_s``
is cut at the quietest frame of its last ~2 s and goes on as a new segment, so no audio is lost.

Times are capture times: each ``feed`` gives the capture time of its first sample. The segmenter
keeps one time anchor and counts samples from it, so how a stream is chunked does not change the
segments; a chunk whose time jumps by more than a frame from the expected one moves the anchor.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

logger = logging.getLogger(__name__)

SAMPLE_RATES = (8000, 16000, 32000, 48000)
FRAME_MS = (10, 20, 30)
_OFFSET_VOICED_FRACTION = 0.1  # the segment ends when the hangover window is at most this voiced
_CUT_SEARCH_S = 2.0


@dataclass(frozen=True)
class SpeechSegment:
    """One utterance: 16 kHz mono PCM16 audio and the capture times of its first and past-last sample."""

    pcm: bytes
    started_at: float
    ended_at: float

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at


@dataclass
class _Frame:
    pcm: bytes
    t: float  # capture time of its first sample
    voiced: bool
    energy: float


class VadSegmenter:
    """Streaming webrtcvad segmenter with pre-roll, hangover, a minimum and a maximum length."""

    engine = "webrtc"

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        frame_ms: int = 30,
        aggressiveness: int = 2,
        pre_roll_ms: int = 300,
        hangover_ms: int = 600,
        min_speech_ms: int = 250,
        max_segment_s: float = 28.0,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES} for webrtcvad, got {sample_rate!r}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_MS} for webrtcvad, got {frame_ms!r}")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        if pre_roll_ms < 0:
            raise ValueError(f"pre_roll_ms must be >= 0, got {pre_roll_ms!r}")
        if hangover_ms < frame_ms:
            raise ValueError(f"hangover_ms must be at least one frame ({frame_ms} ms), got {hangover_ms!r}")
        if min_speech_ms < 0:
            raise ValueError(f"min_speech_ms must be >= 0, got {min_speech_ms!r}")
        if max_segment_s * 1000 < 2 * (pre_roll_ms + frame_ms) or max_segment_s * 1000 < 4 * frame_ms:
            raise ValueError(
                f"max_segment_s ({max_segment_s!r}) must be at least twice pre_roll_ms + frame_ms "
                f"({2 * (pre_roll_ms + frame_ms)} ms)"
            )
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.aggressiveness = aggressiveness
        self.pre_roll_ms = pre_roll_ms
        self.hangover_ms = hangover_ms
        self.min_speech_ms = min_speech_ms
        self.max_segment_s = max_segment_s

        self._vad = webrtcvad.Vad(aggressiveness)
        self._frame_samples = sample_rate * frame_ms // 1000
        self._frame_bytes = self._frame_samples * 2
        self._hangover_frames = max(1, round(hangover_ms / frame_ms))
        self._max_frames = max(2, int(max_segment_s * 1000 // frame_ms))
        self._cut_search_frames = max(1, min(round(_CUT_SEARCH_S * 1000 / frame_ms), self._max_frames // 2))
        self._min_voiced_frames = int(np.ceil(min_speech_ms / frame_ms))

        self._pre_roll: deque[_Frame] = deque(maxlen=max(0, round(pre_roll_ms / frame_ms)))
        self._active: list[_Frame] = []
        self._recent_voiced: deque[bool] = deque(maxlen=self._hangover_frames)
        self._continued = False  # the open segment continues one cut at max_segment_s

        self._buffer = b""
        self._anchor_t: float | None = None
        self._next_index = 0  # sample index (from the anchor) of the first byte in _buffer

        self.frames_seen = 0
        self.segments_emitted = 0
        self.segments_cut = 0
        self.dropped_short = 0

    # --- public API -------------------------------------------------------------------------

    def feed(self, pcm: bytes, t0: float) -> list[SpeechSegment]:
        """Add a chunk of any length; ``t0`` is the capture time of its first sample.

        Returns the segments this chunk completed.
        """
        if len(pcm) % 2:
            raise ValueError(f"PCM16 chunk must have an even number of bytes, got {len(pcm)}")
        self._place(t0)
        self._buffer += pcm
        out: list[SpeechSegment] = []
        n_frames = len(self._buffer) // self._frame_bytes
        for i in range(n_frames):
            data = self._buffer[i * self._frame_bytes : (i + 1) * self._frame_bytes]
            out.extend(self._step(data, self._next_index + i * self._frame_samples))
        self._buffer = self._buffer[n_frames * self._frame_bytes :]
        self._next_index += n_frames * self._frame_samples
        return out

    def flush(self) -> list[SpeechSegment]:
        """End of stream: close the open segment (a trailing partial frame is padded with silence)."""
        out: list[SpeechSegment] = []
        if self._buffer:
            tail = len(self._buffer) // 2
            data = self._buffer + b"\x00" * (self._frame_bytes - len(self._buffer))
            out.extend(self._step(data, self._next_index, keep_samples=tail))
            self._next_index += tail
            self._buffer = b""
        if self._active:
            out.extend(self._close(self._active))
        self._reset_state()
        return out

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

    def _step(self, data: bytes, index: int, keep_samples: int | None = None) -> list[SpeechSegment]:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
        voiced = self._vad.is_speech(data, self.sample_rate)
        if keep_samples is not None:
            data = data[: keep_samples * 2]
        frame = _Frame(data, self._time(index), voiced, float(np.mean(samples**2)))
        self.frames_seen += 1

        if not self._active:
            if not voiced:
                self._pre_roll.append(frame)
                return []
            self._active = [*self._pre_roll, frame]
            self._pre_roll.clear()
            self._recent_voiced.clear()
            self._recent_voiced.append(True)
            return self._cut_if_long()

        self._active.append(frame)
        self._recent_voiced.append(voiced)
        if (
            len(self._recent_voiced) == self._hangover_frames
            and sum(self._recent_voiced) <= _OFFSET_VOICED_FRACTION * self._hangover_frames
        ):
            frames, self._active = self._active, []
            self._recent_voiced.clear()
            return self._close(frames)
        return self._cut_if_long()

    def _cut_if_long(self) -> list[SpeechSegment]:
        if len(self._active) < self._max_frames:
            return []
        window = self._active[-self._cut_search_frames :]
        quietest = min(range(len(window)), key=lambda i: (window[i].energy, -i))
        cut = len(self._active) - len(window) + quietest + 1  # the quietest frame ends this piece
        head, tail = self._active[:cut], self._active[cut:]
        self.segments_cut += 1
        out = self._close(head, force=True)
        self._continued = True
        self._active = tail
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
        pcm = b"".join(f.pcm for f in frames)
        end = frames[-1].t + len(frames[-1].pcm) / 2 / self.sample_rate
        self.segments_emitted += 1
        return [SpeechSegment(pcm, frames[0].t, end)]

    def _reset_state(self) -> None:
        self._pre_roll.clear()
        self._active = []
        self._recent_voiced.clear()
        self._continued = False


VAD_ENGINES: dict[str, type[VadSegmenter]] = {"webrtc": VadSegmenter}
