"""The agent's own health for its heartbeat: CPU, memory, uptime and the local ASR's real-time factor.

CPU time comes from :func:`os.times` (any OS); the resident set size from ``/proc/self/statm`` on
Linux (what the Pis run), else the peak RSS from :mod:`resource`.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections import deque
from pathlib import Path

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Health:
    """Measures this process; :meth:`record_inference` is called after each local transcription."""

    def __init__(self, window: int = 20) -> None:
        self._lock = threading.Lock()
        self._inferences: deque[tuple[float, float]] = deque(maxlen=window)
        self._started = time.monotonic()
        self._last_cpu = self._cpu_s()
        self._last_wall = self._started

    def record_inference(self, audio_s: float, compute_s: float) -> None:
        """One transcription of ``audio_s`` seconds of audio took ``compute_s`` seconds."""
        if audio_s > 0 and compute_s >= 0:
            with self._lock:
                self._inferences.append((audio_s, compute_s))

    def asr_rtf(self) -> float | None:
        """Compute time over audio time of the recent transcriptions (None before the first)."""
        with self._lock:
            audio = sum(a for a, _ in self._inferences)
            compute = sum(c for _, c in self._inferences)
        return round(compute / audio, 4) if audio > 0 else None

    def cpu_percent(self) -> float:
        """CPU used by this process since the previous call, in percent of one core."""
        with self._lock:
            cpu, wall = self._cpu_s(), time.monotonic()
            used, elapsed = cpu - self._last_cpu, wall - self._last_wall
            self._last_cpu, self._last_wall = cpu, wall
        return round(100.0 * used / elapsed, 1) if elapsed > 0 else 0.0

    @staticmethod
    def rss_mb() -> float:
        """Resident memory of this process in MiB (the peak where the current value is unknown)."""
        try:
            pages = int(_STATM.read_text().split()[1])
            return round(pages * _PAGE / 2**20, 1)
        except (OSError, IndexError, ValueError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)

    def uptime_s(self) -> float:
        return round(time.monotonic() - self._started, 1)

    @staticmethod
    def _cpu_s() -> float:
        t = os.times()
        return t.user + t.system
