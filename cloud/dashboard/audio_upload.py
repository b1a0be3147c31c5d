"""An uploaded audio file made into what a device would have sent: 16 kHz mono utterances, Ogg Opus.

Decoding is libsndfile's (the ``soundfile`` wheel, which the cloud already uses for segment audio):
WAV, FLAC, Ogg Vorbis, Ogg Opus and MP3, nothing else (no ffmpeg). The file is read in blocks,
mixed down to mono and resampled to 16 kHz as it is read (``soxr``'s streaming resampler), so
memory holds the 16 kHz signal only (3.7 MB a minute), and a file longer than allowed is refused
from its header or as soon as its decoded audio passes the limit. A file that ends early is refused
when libsndfile can tell: a FLAC stream that loses sync, an MP3 shorter than its header says. A
truncated WAV or Ogg file is read as the shorter file it is (libsndfile counts what is there).

Cutting is done the way the agent's ``silero`` VAD engine does it, with the same model (Silero v6)
and the agent's default timing, through faster-whisper's implementation of Silero's splitter
(:func:`faster_whisper.vad.get_speech_timestamps`; faster-whisper is in the cloud extra already).
The agent's own segmenter (:mod:`edge_agent.vad`) is a streaming state machine of a service the
cloud may not import (``tests/test_layers.py``); on a whole file the offline splitter is the simpler
tool, and it cuts long speech at its last pause before :data:`MAX_PIECE_S`, as the agent does.
Each piece is encoded as the agent encodes (:func:`runtime.audiocodec.to_audio`, Ogg Opus).
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cloud.dashboard.uploads import UploadRefused
from contracts import Audio
from runtime.audiocodec import to_audio

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""What segments carry, the agent's capture rate and Whisper's."""
MAX_PIECE_S = 28.0
"""Longest piece: the agent's ``vad.max_segment_s`` (Whisper's window is 30 s)."""
SPEECH_PAD_MS = 300
"""Audio kept around speech: the agent's ``vad.pre_roll_ms``."""
MIN_SILENCE_MS = 600
"""Silence that ends an utterance: the agent's ``vad.hangover_ms``."""
MIN_SPEECH_MS = 250
"""Shorter utterances are dropped: the agent's ``vad.min_speech_ms``."""
THRESHOLD = 0.5
"""Silero's speech probability threshold: the agent's ``vad.threshold``."""

ACCEPTED: dict[str, frozenset[str] | None] = {
    "WAV": None,
    "WAVEX": None,
    "RF64": None,
    "FLAC": None,
    "OGG": frozenset({"VORBIS", "OPUS"}),
    "MP3": None,
}
"""libsndfile's container formats taken (with the codecs taken in each; None: any it decodes)."""
TAKEN = "WAV, FLAC, Ogg Vorbis, Ogg Opus and MP3"
ENCODE_THREADS = 4
"""Most threads encoding one file's pieces (at most the machine's cores)."""
BLOCK_S = 10
"""Seconds decoded per block."""
SHORT_BY_S = 0.1
"""A file whose decoded audio falls this much (and 2 %) short of its header's length is truncated."""
# libsndfile raises these on data it cannot read (LibsndfileError is a RuntimeError)
_READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError)


@dataclass(frozen=True)
class DecodedAudio:
    """A file's audio at 16 kHz mono (float32 in [-1, 1]), and what the file was."""

    samples: np.ndarray
    format: str  # libsndfile's container and codec, e.g. "MP3 MPEG_LAYER_III"
    source_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.samples.size / SAMPLE_RATE


@dataclass(frozen=True)
class Piece:
    """One utterance of a file: where it lies (16 kHz samples from the file's start) and its audio."""

    start: int
    end: int
    audio: Audio

    @property
    def offset_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def decode_file(data: bytes, max_s: float) -> DecodedAudio:
    """The audio of an uploaded file at 16 kHz mono; :class:`UploadRefused` (415 not a taken format,
    413 longer than ``max_s``, 422 damaged or empty) otherwise."""
    import soundfile as sf
    import soxr

    try:
        opened = sf.SoundFile(io.BytesIO(data))
    except _READ_ERRORS as exc:
        raise UploadRefused(415, f"not an audio file libsndfile reads ({TAKEN}): {_reason(exc)}") from exc
    with opened:
        container, codec, rate, channels = opened.format, opened.subtype, opened.samplerate, opened.channels
        declared = opened.frames
        kind = f"{container} {codec}"
        codecs = ACCEPTED.get(container, frozenset())
        if codecs is not None and codec not in codecs:
            raise UploadRefused(415, f"the file is {kind}: only {TAKEN} are taken")
        if rate <= 0 or channels <= 0:
            raise UploadRefused(422, f"the {kind} file declares {rate} Hz and {channels} channels")
        if declared / rate > max_s:
            raise UploadRefused(413, f"{declared / rate:.0f} s of audio, over {max_s:.0f} s")
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        parts: list[np.ndarray] = []
        read = 0
        try:
            while (block := opened.read(rate * BLOCK_S, dtype="float32", always_2d=True)).shape[0]:
                read += block.shape[0]
                if read / rate > max_s:  # a header that understated the length
                    raise UploadRefused(413, f"over {max_s:.0f} s of audio")
                parts.append(resampler.resample_chunk(block.mean(axis=1, dtype=np.float32)))
        except _READ_ERRORS as exc:
            detail = f"the {kind} audio does not decode after {read / rate:.1f} s: {_reason(exc)}"
            raise UploadRefused(422, detail) from exc
    parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if declared - read > max(SHORT_BY_S * rate, 0.02 * declared):
        raise UploadRefused(422, f"the {kind} file is truncated: {read / rate:.1f} s of the {declared / rate:.1f} s "
                                 "its header declares")  # fmt: skip
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if samples.size < SAMPLE_RATE // 10:
        raise UploadRefused(422, f"the {kind} file holds no audio ({samples.size / SAMPLE_RATE:.2f} s)")
    return DecodedAudio(np.clip(samples, -1.0, 1.0, out=samples), kind, rate, channels)


def speech_spans(samples: np.ndarray) -> list[tuple[int, int]]:
    """The utterances of 16 kHz mono audio as (start, end) sample ranges, in order, none longer than
    :data:`MAX_PIECE_S` (see the module: Silero with the agent's timing)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=THRESHOLD,
        min_speech_duration_ms=MIN_SPEECH_MS,
        max_speech_duration_s=MAX_PIECE_S,
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS,
    )
    spans = [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(samples, options, SAMPLE_RATE)]
    longest = int(MAX_PIECE_S * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    for start, end in spans:  # the splitter keeps within the limit; should a piece not, it is cut evenly
        n = -(-(end - start) // longest)
        bounds = np.linspace(start, end, n + 1).round().astype(int)
        out += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return out


def cut(decoded: DecodedAudio) -> list[Piece]:
    """The file's utterances, each encoded as the agent encodes a segment (Ogg Opus, 16 kHz mono).

    The encoder costs ~32 ms of CPU per second of speech (a 30 min talk: about a minute), so pieces
    are encoded on up to :data:`ENCODE_THREADS` threads (libsndfile runs without the GIL)."""

    def piece(span: tuple[int, int]) -> Piece:
        start, end = span
        pcm = np.round(decoded.samples[start:end] * 32767.0).astype("<i2").tobytes()
        return Piece(start, end, to_audio(pcm, SAMPLE_RATE, 1, "opus"))

    spans = speech_spans(decoded.samples)
    with ThreadPoolExecutor(max_workers=max(1, min(ENCODE_THREADS, os.cpu_count() or 1))) as pool:
        pieces = list(pool.map(piece, spans))
    log.debug("%.1f s of %s cut into %d utterances", decoded.duration_s, decoded.format, len(pieces))
    return pieces


def _reason(exc: BaseException) -> str:
    """libsndfile's words for a failure, without the buffer's repr."""
    return str(getattr(exc, "error_string", None) or exc)
