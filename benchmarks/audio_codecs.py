"""Segment audio on the wire: PCM16 vs FLAC vs Ogg Opus at several bitrates (issue 9 §6).

    .venv/bin/python benchmarks/audio_codecs.py [--models-dir DIR] [--levels 0.95 0.9 0.8] [--reps 3]

Corpus: the bundled sample plus generated recordings (Piper and espeak, clean and at 20 dB SNR of
white noise) of :data:`TEXTS`, cut into segments by the agent's own VAD (what the agent encodes).
For each codec (Opus once per libsndfile ``compression_level`` in ``--levels``):

- bytes per audio second of the encoded payload, median over segments (and kbit/s);
- encode CPU time per audio second (process time, the fastest of ``--reps`` encodings of each
  segment, median over segments): what the agent's ASR thread pays, measured before any model is
  loaded so that no idle inference thread is counted;
- decode CPU time per audio second, as the cloud's :func:`cloud.audio.to_float32` does it;
- the WER of the cloud model (the transformers engine with the prepared tiny.en at
  ``<models_dir>/tiny.en/hf``, as the demo's worker uses it, batches of 8 sorted by length like the
  worker) over all segments, and its difference to PCM's in points (the bar: Opus at most +0.3).

Prints progress lines, then one JSON line: ``segments``, ``audio_s``, ``codecs`` (per codec:
``bytes_per_s``, ``kbit_s``, ``encode_cpu_ms_per_s``, ``decode_cpu_ms_per_s``, ``wer``,
``wer_delta_points``), ``opus_default`` (the level :mod:`runtime.audiocodec` ships),
``opus_default_delta_points``, ``smallest_opus_within_bar``, ``bar_points``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.corpus import TEXTS, recordings, vad_segments  # noqa: E402
from runtime.audiocodec import OPUS_COMPRESSION_LEVEL, encode  # noqa: E402
from runtime.settings import models_dir as default_models_dir  # noqa: E402

RATE = 16000
BAR_POINTS = 0.3
BATCH = 8


def corpus(workdir: Path) -> list[tuple[bytes, str]]:
    """(PCM16 bytes, reference text) per segment the agent's VAD cuts from each recording."""
    voices = (("piper", None), ("espeak", None), ("piper", 20.0), ("espeak", 20.0))
    return [seg for rec in recordings(workdir, TEXTS[:10], voices, seed=5) for seg in vad_segments(rec)]


def cpu_per_second(action: object, seconds: float, reps: int) -> float:
    """The fastest of ``reps`` runs of ``action()``, in CPU (process) milliseconds per audio second."""
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        action()  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return 1000 * best / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--levels", type=float, nargs="+", default=[0.95, 0.9, 0.8, 0.6])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    hf = Path(args.models_dir).expanduser() / "tiny.en" / "hf"
    if not (hf / "config.json").exists():
        sys.stderr.write(f"no Hugging Face checkpoint at {hf}: run `edgecap models prepare`\n")
        return 2

    from contracts import Audio
    from devtools.wer import wer

    variants: dict[str, tuple[str, float]] = {"pcm_s16le": ("pcm_s16le", 0.0), "flac": ("flac", 0.0)}
    variants |= {f"opus@{level:g}": ("opus", level) for level in args.levels}
    with tempfile.TemporaryDirectory(prefix="edgecap-codecs-") as tmp:
        segments = corpus(Path(tmp))
    audio_s = sum(len(pcm) / 2 / RATE for pcm, _ in segments)
    print(f"{len(segments)} segments, {audio_s:.1f} s of audio", flush=True)

    encoded: dict[str, list[Audio]] = {}
    figures: dict[str, dict[str, float]] = {}
    for name, (codec, level) in variants.items():
        audios, sizes, cpu = [], [], []
        for pcm, _ in segments:
            seconds = len(pcm) / 2 / RATE
            data = encode(pcm, RATE, 1, codec, opus_level=level)  # type: ignore[arg-type]
            cpu.append(cpu_per_second(lambda: encode(pcm, RATE, 1, codec, opus_level=level),  # type: ignore[arg-type]  # noqa: B023
                                      seconds, args.reps))
            sizes.append(len(data) / seconds)
            audios.append(Audio(codec=codec, sample_rate=RATE, samples=len(pcm) // 2, data=data))  # type: ignore[arg-type]
        encoded[name] = audios
        figures[name] = {"bytes_per_s": round(statistics.median(sizes)),
                         "kbit_s": round(statistics.median(sizes) * 8 / 1000, 1),
                         "encode_cpu_ms_per_s": round(statistics.median(cpu), 2)}
        print(f"{name}: {figures[name]}", flush=True)

    from cloud.asr import create_engine
    from cloud.audio import to_float32
    from cloud.settings import WorkerSettings

    engine = create_engine(WorkerSettings(engine="transformers", model_dir=hf, threads=2, beam_size=1))
    engine.transcribe_batch([np.zeros(RATE, dtype=np.float32)])  # warm up
    reference = " ".join(text for _, text in segments)
    for name, audios in encoded.items():
        floats, cpu = [], []
        for audio in audios:
            cpu.append(cpu_per_second(lambda: to_float32(audio), audio.duration_s, 1))  # noqa: B023
            floats.append(to_float32(audio))
        order = sorted(range(len(floats)), key=lambda i: floats[i].size)
        texts = [""] * len(floats)
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            for i, transcript in zip(batch, engine.transcribe_batch([floats[i] for i in batch]), strict=True):
                texts[i] = transcript.text
        figures[name]["decode_cpu_ms_per_s"] = round(statistics.median(cpu), 2)
        figures[name]["wer"] = round(100 * wer(reference, " ".join(texts)), 2)
        print(f"{name}: WER {figures[name]['wer']:.2f}%", flush=True)
    base = figures["pcm_s16le"]["wer"]
    for values in figures.values():
        values["wer_delta_points"] = round(values["wer"] - base, 2)
    within = [n for n in figures if n.startswith("opus@") and figures[n]["wer_delta_points"] <= BAR_POINTS]
    default = f"opus@{OPUS_COMPRESSION_LEVEL:g}"
    summary = {
        "segments": len(segments),
        "audio_s": round(audio_s, 1),
        "codecs": figures,
        "opus_default": OPUS_COMPRESSION_LEVEL,
        "opus_default_delta_points": figures[default]["wer_delta_points"] if default in figures else None,
        "smallest_opus_within_bar": min(within, key=lambda n: figures[n]["bytes_per_s"]) if within else None,
        "bar_points": BAR_POINTS,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
