"""Sample-rate conversion: whole-signal (FFT) for files, streaming (windowed sinc) for live input.

:class:`StreamResampler` is a polyphase FIR interpolator with a Kaiser-windowed sinc kernel. It
keeps the input tail it still needs between calls, so a signal resampled chunk by chunk is the
same signal, sample for sample, as one resampled in one call: no clicks at chunk boundaries.
"""

from __future__ import annotations

import math

import numpy as np

_MAX_PHASES = 4096  # above this many filter phases (odd rate pairs) kernels are computed per sample
_BLOCK = 4096  # outputs computed per vectorised step (bounds memory for long inputs)


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling by FFT (whole-signal); good enough for speech files."""
    if src_rate == dst_rate or x.size == 0:
        return x
    n_out = int(round(x.size * dst_rate / src_rate))
    spectrum = np.fft.rfft(x)
    keep = min(spectrum.size, n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n_out) * (n_out / x.size)
    return out.astype(np.float32)


class StreamResampler:
    """Convert a float signal from ``src_rate`` to ``dst_rate`` in pieces of any length.

    Output sample ``n`` lies at input position ``n * src_rate / dst_rate``; the filter is symmetric
    (zero phase), so output times follow input times exactly. The output lags the input by
    ``zeros`` output periods at most; :meth:`flush` returns the rest at the end of a stream.
    """

    def __init__(self, src_rate: int, dst_rate: int, *, zeros: int = 16, rolloff: float = 0.95, beta: float = 8.0):
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        g = math.gcd(src_rate, dst_rate)
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self.up, self.down = dst_rate // g, src_rate // g
        self.cutoff = min(1.0, dst_rate / src_rate) * rolloff  # fraction of the input Nyquist frequency
        self.half = math.ceil(zeros / self.cutoff)  # kernel half-width in input samples
        self.beta = beta
        self._offsets = np.arange(-self.half + 1, self.half + 1)
        self._table = self._kernel(np.arange(self.up) / self.up) if self.up <= _MAX_PHASES else None
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far; the next input starts a new one."""
        self._buf = np.zeros(self.half, dtype=np.float64)  # implicit silence before the first sample
        self._buf_start = -self.half  # input index of _buf[0]
        self._next = 0  # index of the next output sample
        self._fed = 0  # input samples fed since reset

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next piece of the stream; returns every output sample it completes."""
        if self.up == self.down:
            return np.asarray(x, dtype=np.float64)
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        self._fed += len(x)
        last_usable = self._buf_start + len(self._buf) - 1 - self.half  # newest centre with a full window
        stop = ((last_usable + 1) * self.up - 1) // self.down + 1 if last_usable >= 0 else 0
        return self._emit(stop)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining output (the input is taken as silent past its end); resets."""
        if self.up == self.down:
            return np.zeros(0)
        total = -(-self._fed * self.up // self.down)  # ceil(fed * dst / src)
        self._buf = np.concatenate([self._buf, np.zeros(self.half + 1)])
        out = self._emit(total)
        self.reset()
        return out

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self._next:
            return np.zeros(0)
        pieces = [self._compute(a, min(a + _BLOCK, stop)) for a in range(self._next, stop, _BLOCK)]
        self._next = stop
        first_needed = (stop * self.down) // self.up - self.half + 1
        drop = max(0, first_needed - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return np.concatenate(pieces)

    def _compute(self, n0: int, n1: int) -> np.ndarray:
        pos = np.arange(n0, n1, dtype=np.int64) * self.down
        base, phase = pos // self.up, pos % self.up
        kernels = self._table[phase] if self._table is not None else self._kernel(phase / self.up)
        window = self._buf[(base - self._buf_start)[:, None] + self._offsets[None, :]]
        return np.einsum("ij,ij->i", window, kernels)

    def _kernel(self, frac: np.ndarray) -> np.ndarray:
        """Kernel rows for output positions ``frac`` input samples past an input sample."""
        d = frac[:, None] - self._offsets[None, :]  # distance from the output position to each tap
        u = np.clip(d / self.half, -1.0, 1.0)
        window = np.i0(self.beta * np.sqrt(1.0 - u * u)) / np.i0(self.beta)
        rows = self.cutoff * np.sinc(self.cutoff * d) * window
        return rows / rows.sum(axis=1, keepdims=True)  # unit gain at DC for every phase
