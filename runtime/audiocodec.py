"""A segment's audio in and out of its wire codec: Ogg Opus, FLAC or raw PCM16, for device and cloud.

The agent encodes every segment (Opus by default: about a tenth of PCM16, so that a 28 s
segment fits a stock Kafka's 1 MB record limit with room to spare) and the transcription worker
decodes it; both use this one module so that they agree on the container, the checks and the
errors. libsndfile (bundled with the ``soundfile`` wheel, in the ``edge`` and ``cloud`` extras)
does the work; it is imported only when Opus or FLAC is encoded or decoded, so the bridge, which
never looks inside audio, does not need it.

Decoding is strict, because the bytes come from devices: the container must be the declared one
(an Ogg Opus stream for ``opus``, a FLAC stream for ``flac``), with the declared sample rate,
channel count and number of samples; anything else raises :class:`CorruptAudio`.
"""

from __future__ import annotations

import io
import logging
from types import ModuleType
from typing import Any

import numpy as np

from contracts import Audio, AudioCodec
from contracts.bounds import OPUS_SAMPLE_RATES_HZ
from runtime.plugins import MissingPackage

log = logging.getLogger(__name__)

OPUS_COMPRESSION_LEVEL = 0.9
"""libsndfile's Opus ``compression_level`` (0 best quality … 1 smallest), which it maps to a target
bitrate: 0.9 is about 27 kbit/s on 16 kHz mono speech (3.4 kB per second, a 28 s segment ~130 kB in
base64), chosen with ``benchmarks/audio_codecs.py``: the cloud model's WER on it was within the 0.3
points of PCM's that issue 9 allows (0.95, 18 kbit/s, was too, with less margin; the README has the
figures). The encoder costs ~32 ms of CPU per audio second here."""

# libsndfile's name of each compressed codec: (container format, subtype)
_FORMATS: dict[str, tuple[str, str]] = {"opus": ("OGG", "OPUS"), "flac": ("FLAC", "PCM_16")}
# libsndfile raises these on a payload it cannot read (LibsndfileError is a RuntimeError)
_READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError)


class AudioCodecError(ValueError):
    """Audio that cannot be encoded or decoded as asked."""


class UnsupportedAudio(AudioCodecError):
    """A codec, sample rate or channel count the codec cannot encode (Opus: 8, 12, 16, 24, 48 kHz)."""


class CorruptAudio(AudioCodecError):
    """A payload that is not what its message declares: not the codec's container, another sample
    rate or channel count, another number of samples, or damaged data."""


def _soundfile() -> ModuleType:
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - both extras that encode or decode install it
        raise MissingPackage("Opus and FLAC audio need soundfile: install edgecap[edge] or edgecap[cloud]") from exc
    return soundfile


def _check(codec: str, sample_rate: int, channels: int) -> None:
    if codec not in ("opus", "flac", "pcm_s16le"):
        raise UnsupportedAudio(f"unknown audio codec {codec!r} (opus, flac or pcm_s16le)")
    if not 1 <= channels <= 2:
        raise UnsupportedAudio(f"{channels} channels: audio is mono or stereo")
    if codec == "opus" and sample_rate not in OPUS_SAMPLE_RATES_HZ:
        rates = ", ".join(f"{r // 1000}" for r in OPUS_SAMPLE_RATES_HZ)
        raise UnsupportedAudio(f"opus cannot encode {sample_rate} Hz audio (only {rates} kHz): resample, or use flac")


def encode(
    pcm: bytes, sample_rate: int, channels: int, codec: AudioCodec, *, opus_level: float = OPUS_COMPRESSION_LEVEL
) -> bytes:
    """``pcm`` (signed 16-bit little-endian, interleaved) encoded as ``codec``: an Ogg Opus or FLAC
    stream, or the same bytes for ``pcm_s16le``. ``opus_level`` is libsndfile's compression level
    (for measurements; the default is the house's choice)."""
    _check(codec, sample_rate, channels)
    if len(pcm) % (2 * channels):
        raise UnsupportedAudio(f"{len(pcm)} bytes of PCM16 are not a whole number of {channels}-channel frames")
    if codec == "pcm_s16le" or not pcm:
        return bytes(pcm)  # no audio is no bytes in every codec (an empty Ogg or FLAC stream does not open)
    sf = _soundfile()
    container, subtype = _FORMATS[codec]
    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    out = io.BytesIO()
    options: dict[str, Any] = {"compression_level": opus_level} if codec == "opus" else {}
    sf.write(out, samples, sample_rate, format=container, subtype=subtype, **options)
    return out.getvalue()


def to_audio(pcm: bytes, sample_rate: int, channels: int, codec: AudioCodec) -> Audio:
    """The contract's :class:`~contracts.Audio` of ``pcm`` (PCM16 LE) encoded as ``codec``, with its
    sample count, so that receivers know the duration without decoding."""
    data = encode(pcm, sample_rate, channels, codec)
    return Audio(codec=codec, sample_rate=sample_rate, channels=channels, samples=len(pcm) // (2 * channels), data=data)


def decode(data: bytes, codec: AudioCodec, sample_rate: int, channels: int, samples: int | None = None) -> np.ndarray:
    """The audio in ``data`` as int16 samples of shape (samples, channels), checked against what the
    message declares (``samples`` may be None only for PCM16). Raises :class:`CorruptAudio` for
    anything that is not that."""
    _check(codec, sample_rate, channels)
    if codec == "pcm_s16le":
        if len(data) % (2 * channels):
            raise CorruptAudio(f"{len(data)} bytes of PCM16 are not a whole number of {channels}-channel frames")
        pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
        if samples is not None and pcm.shape[0] != samples:
            raise CorruptAudio(f"{pcm.shape[0]} samples of PCM16, {samples} declared")
        return pcm.astype(np.int16)
    if samples is None:
        raise CorruptAudio(f"{codec} audio without its number of samples")
    if samples == 0 and not data:
        return np.zeros((0, channels), dtype=np.int16)
    sf = _soundfile()
    container, _ = _FORMATS[codec]
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            found = (f.format, f.subtype if codec == "opus" else "", f.samplerate, f.channels, f.frames)
            wanted = (container, "OPUS" if codec == "opus" else "", sample_rate, channels, samples)
            if found != wanted:
                raise CorruptAudio(
                    f"not the declared {codec} audio: format, subtype, rate, channels, samples are {found}, "
                    f"declared {wanted}"
                )
            pcm = f.read(samples, dtype="int16", always_2d=True)
    except CorruptAudio:
        raise
    except _READ_ERRORS as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # libsndfile's words, not the buffer's repr
        raise CorruptAudio(f"{codec} audio does not decode: {reason}") from exc
    if pcm.shape[0] != samples:
        raise CorruptAudio(f"{codec} audio holds {pcm.shape[0]} samples, {samples} declared")
    return np.ascontiguousarray(pcm, dtype=np.int16)


def decode_audio(audio: Audio) -> np.ndarray:
    """:func:`decode` of a contract's :class:`~contracts.Audio`."""
    return decode(audio.data, audio.codec, audio.sample_rate, audio.channels, audio.samples)
