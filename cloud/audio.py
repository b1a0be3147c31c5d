"""Audio payloads to what Whisper wants: mono float32 at 16 kHz, from any codec of the contract."""

from __future__ import annotations

import numpy as np

from contracts import Audio
from runtime.audiocodec import AudioCodecError, decode_audio

__all__ = ["SAMPLE_RATE", "AudioCodecError", "resample", "to_float32"]

SAMPLE_RATE = 16000


def to_float32(audio: Audio) -> np.ndarray:
    """Opus, FLAC or PCM16 audio (any rate and channel count the contract allows) as mono float32
    in [-1, 1) at 16 kHz. Raises :class:`~runtime.audiocodec.AudioCodecError` when the data is not the
    audio its message declares (the transcriber dead-letters the segment)."""
    pcm = decode_audio(audio).astype(np.float32) / 32768.0
    mono = pcm.mean(axis=1) if audio.channels > 1 else pcm[:, 0]
    return resample(mono, audio.sample_rate, SAMPLE_RATE)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain (exact for a periodic signal; fine for speech)."""
    if rate_in == rate_out or signal.size == 0:
        return np.ascontiguousarray(signal, dtype=np.float32)
    n_out = max(1, round(signal.size * rate_out / rate_in))
    spectrum = np.fft.rfft(signal.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= spectrum.size:
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - spectrum.size, dtype=spectrum.dtype)])
    return (np.fft.irfft(spectrum, n_out) * (n_out / signal.size)).astype(np.float32)
