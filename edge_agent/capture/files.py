"""Recordings as input: any WAV/FLAC/OGG, converted to 16 kHz mono, optionally paced in real time.

With ``realtime=True`` each chunk is released only when it would have been fully captured by a
live device, so a recording can stand in for a microphone and latencies measured downstream are real.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge_agent.capture.base import SAMPLE_RATE, AudioSource, CaptureError
from edge_agent.capture.resample import resample

log = logging.getLogger(__name__)


def load_audio(path: Path) -> np.ndarray:
    """Read a WAV/FLAC/OGG file of any rate and channel count as 16 kHz mono int16."""
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - part of the edge extra
        raise CaptureError("reading audio files needs soundfile: pip install 'edgecap[edge]'") from exc
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise CaptureError(f"cannot read {path} as audio: {exc}") from exc
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = resample(mono, rate, SAMPLE_RATE)
    return np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)


class FileSource(AudioSource):
    """Chunks of a recording, optionally paced in real time."""

    def __init__(self, path: Path, *, realtime: bool = True, chunk_ms: int = 30) -> None:
        self.path = path
        self.realtime = realtime
        self.chunk = SAMPLE_RATE * chunk_ms // 1000
        self.samples = load_audio(path)
        log.info("input %s: %.1f s, realtime=%s", path, self.samples.size / SAMPLE_RATE, realtime)

    @property
    def duration_s(self) -> float:
        return self.samples.size / SAMPLE_RATE

    def chunks(self, stop: threading.Event) -> Iterator[tuple[bytes, float]]:
        """Yield ``(pcm16 bytes, capture time of the first sample)`` until the file ends or ``stop``."""
        start = time.time()
        for offset in range(0, self.samples.size, self.chunk):
            if stop.is_set():
                return
            block = self.samples[offset : offset + self.chunk]
            t0 = start + offset / SAMPLE_RATE
            if self.realtime:
                ready = t0 + block.size / SAMPLE_RATE
                delay = ready - time.time()
                if delay > 0 and stop.wait(delay):
                    return
            yield block.tobytes(), t0
