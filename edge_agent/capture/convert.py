"""Live PCM16 of any rate and channel count → 16 kHz mono PCM16 chunks with capture times."""

from __future__ import annotations

import logging

import numpy as np

from edge_agent.capture.base import SAMPLE_RATE
from edge_agent.capture.resample import StreamResampler

log = logging.getLogger(__name__)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16 (rounded, clipped)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


class PcmConverter:
    """Turns blocks of interleaved PCM16 (as read from a device or a pipe) into the agent's chunks.

    Blocks may split frames anywhere; the remainder waits for the next block. Capture times come
    from the wall clock at which each block was read: one continuous stream keeps the nominal
    sample clock (blocks read late, from a buffer, are still placed right), and a block that
    arrives more than ``max_gap_s`` after its nominal time starts a new stream (a gap: the device
    was gone or the writer paused), so timestamps never drift from reality.
    """

    def __init__(self, rate: int, channels: int, chunk_ms: int, *, max_gap_s: float = 1.0) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.rate, self.channels = rate, channels
        self.chunk = SAMPLE_RATE * chunk_ms // 1000
        self.max_gap_s = max_gap_s
        self.gaps = 0
        self._resampler = StreamResampler(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None
        self._rest = b""  # bytes of an incomplete frame
        self._origin: float | None = None  # wall-clock time of input frame 0 of this stream
        self._frames_in = 0
        self._out = np.zeros(0, dtype=np.int16)  # converted samples not yet emitted
        self._out_index = 0  # 16 kHz sample index of _out[0] in this stream

    def feed(self, data: bytes, read_at: float) -> list[tuple[bytes, float]]:
        """Add a block read at wall-clock ``read_at`` (just after its last frame); returns full chunks."""
        data = self._rest + data
        frame_bytes = 2 * self.channels
        whole = len(data) - len(data) % frame_bytes
        self._rest = data[whole:]
        if not whole:
            return []
        frames = np.frombuffer(data[:whole], dtype="<i2").reshape(-1, self.channels)
        out: list[tuple[bytes, float]] = []
        n = frames.shape[0]
        if self._origin is not None and read_at - (self._origin + (self._frames_in + n) / self.rate) > self.max_gap_s:
            self.gaps += 1
            log.info("audio resumed after a gap; capture times re-anchored")
            out.extend(self.flush())
        if self._origin is None:
            self._origin = read_at - n / self.rate
        self._frames_in += n
        mono = frames.mean(axis=1) / 32768.0
        if self._resampler is not None:
            mono = self._resampler.process(mono)
        self._out = np.concatenate([self._out, to_pcm16(mono)])
        out.extend(self._take(full_only=True))
        return out

    def flush(self) -> list[tuple[bytes, float]]:
        """End of a continuous stream: everything left, as chunks (the last may be short)."""
        if self._resampler is not None:
            self._out = np.concatenate([self._out, to_pcm16(self._resampler.flush())])
        out = self._take(full_only=False)
        self._rest = b""
        self._origin = None
        self._frames_in = 0
        self._out = np.zeros(0, dtype=np.int16)
        self._out_index = 0
        return out

    def _take(self, *, full_only: bool) -> list[tuple[bytes, float]]:
        if self._origin is None:
            return []
        out = []
        start = 0
        while self._out.size - start >= (self.chunk if full_only else 1):
            block = self._out[start : start + self.chunk]
            out.append((block.tobytes(), self._origin + (self._out_index + start) / SAMPLE_RATE))
            start += block.size
        self._out = self._out[start:]
        self._out_index += start
        return out
