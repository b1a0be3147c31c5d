"""Which cloud model the demo and every CPU-only worker use: the candidates against the edge draft.

    .venv/bin/python benchmarks/cloud_model_choice.py [--models-dir DIR] [--texts N]

Corpus, three sets, each cut into segments by the agent's own VAD (what the cloud receives):
``clean`` (the bundled sample and Piper's voice), ``noisy`` (Piper at 10 dB SNR of white noise),
``espeak`` (espeak-ng's robotic voice). Sentences are :data:`TEXTS` (the first ``--texts``).

The draft is the agent's int8 ONNX tiny.en as the agent commits it (``asr.window_s``), as in
``benchmarks/edge_asr.py``. Candidates run on the ``ctranslate2`` engine as the worker runs it
(int8 on CPU, 2 threads, batches of 8 sorted by length): tiny.en greedy (for reference),
tiny.en beam 5, base greedy, base beam 5 (base with the language fixed to English, as the
pipeline is English: the draft model is English-only) and base beam 5 detecting the language
(the worker's default when ``language`` is unset). WER per set (jiwer, normalised) over the
set's segments; real-time factor (compute seconds over audio seconds) over all sets.

The choice: among the candidates whose WER is below the draft's on every set, the lowest mean WER
over the sets (ties: the faster). Prints progress lines, then one JSON line: ``segments``,
``audio_s`` per set, ``draft`` and each candidate with ``wer`` per set and ``rtf``,
``better_than_draft_everywhere`` per candidate, ``chosen`` (null when none is better everywhere).
Base needs the ``models-base`` extra and ``edgecap models prepare --model base --no-onnx``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.corpus import TEXTS, as_float, recordings, vad_segments  # noqa: E402
from runtime.settings import models_dir as default_models_dir  # noqa: E402

SETS = {"clean": [("piper", None)], "noisy": [("piper", 10.0)], "espeak": [("espeak", None)]}
RATE = 16000
BATCH = 8


@dataclass(frozen=True)
class Candidate:
    name: str
    model: str
    beam_size: int
    language: str | None = "en"


CANDIDATES = [
    Candidate("tiny.en-greedy", "tiny.en", 1),
    Candidate("tiny.en-beam5", "tiny.en", 5),
    Candidate("base-greedy", "base", 1),
    Candidate("base-beam5", "base", 5),
    Candidate("base-beam5-detect", "base", 5, None),
]


def corpus(workdir: Path, texts: list[str]) -> dict[str, list[tuple[np.ndarray, str]]]:
    """Per set: (float32 audio, reference text) per segment the agent's VAD cuts."""
    return {
        name: [(as_float(pcm), said) for rec in recordings(workdir, texts, voices, seed=11, sample=name == "clean")
               for pcm, said in vad_segments(rec)]
        for name, voices in SETS.items()
    }  # fmt: skip


def drafts(models_dir: Path, audios: list[np.ndarray]) -> tuple[list[str], float]:
    """The agent's committed drafts (int8 ONNX tiny.en, the commit window) and the compute seconds."""
    from edge_agent.asr import OnnxWhisper
    from edge_agent.settings import AsrSettings

    model = OnnxWhisper(models_dir / "tiny.en" / "onnx-int8", threads=2)
    model.warmup()
    window = AsrSettings().window_s
    started = time.perf_counter()
    texts = [model.transcribe(a, window_s=window).text for a in audios]
    return texts, time.perf_counter() - started


def cloud(models_dir: Path, candidate: Candidate, audios: list[np.ndarray]) -> tuple[list[str], float]:
    """The worker's engine on ``audios`` in batches of :data:`BATCH` sorted by length."""
    from cloud.asr import create_engine
    from cloud.settings import WorkerSettings

    engine = create_engine(WorkerSettings(engine="ctranslate2", model_dir=models_dir / candidate.model, threads=2,
                                          beam_size=candidate.beam_size, language=candidate.language))  # fmt: skip
    engine.transcribe_batch([np.zeros(RATE, np.float32)])  # warm up
    order = sorted(range(len(audios)), key=lambda i: audios[i].size)
    texts = [""] * len(audios)
    started = time.perf_counter()
    for at in range(0, len(order), BATCH):
        chunk = order[at : at + BATCH]
        for i, t in zip(chunk, engine.transcribe_batch([audios[i] for i in chunk]), strict=True):
            texts[i] = t.text
    spent = time.perf_counter() - started
    engine.close()
    return texts, spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--texts", type=int, default=len(TEXTS), help="sentences per set (a subset: fewer)")
    args = parser.parse_args()
    models_dir = Path(args.models_dir).expanduser()
    from devtools.wer import wer

    with tempfile.TemporaryDirectory(prefix="edgecap-cloud-choice-") as tmp:
        sets = corpus(Path(tmp), TEXTS[: args.texts])
    names = list(sets)
    audios = [a for n in names for a, _ in sets[n]]
    bounds, at = {}, 0
    for n in names:
        bounds[n] = (at, at + len(sets[n]))
        at += len(sets[n])
    audio_s = {n: round(sum(a.size for a, _ in sets[n]) / RATE, 1) for n in names}
    total_s = sum(audio_s.values())
    print(f"{len(audios)} segments; audio seconds per set: {audio_s}", flush=True)

    def score(texts: list[str], spent: float) -> dict[str, object]:
        per_set = {}
        for n in names:
            lo, hi = bounds[n]
            per_set[n] = round(wer(" ".join(t for _, t in sets[n]), " ".join(texts[lo:hi])), 4)
        mean = round(statistics.mean(per_set.values()), 4)
        return {"wer": per_set, "wer_mean": mean, "rtf": round(spent / total_s, 4)}

    results: dict[str, dict[str, object]] = {}
    results["draft"] = score(*drafts(models_dir, audios))
    print(f"draft (edge int8 ONNX tiny.en): {results['draft']}", flush=True)
    for candidate in CANDIDATES:
        if not (models_dir / candidate.model / "ct2" / "model.bin").is_file():
            print(f"{candidate.name}: skipped, {candidate.model} not prepared", flush=True)
            continue
        results[candidate.name] = score(*cloud(models_dir, candidate, audios))
        print(f"{candidate.name}: {results[candidate.name]}", flush=True)

    draft_wer: dict[str, float] = results["draft"]["wer"]  # type: ignore[assignment]
    better = {
        name: all(r["wer"][n] < draft_wer[n] for n in names)  # type: ignore[index]
        for name, r in results.items()
        if name != "draft"
    }
    winners = [name for name, ok in better.items() if ok]
    chosen = min(winners, key=lambda name: (results[name]["wer_mean"], results[name]["rtf"]), default=None)  # type: ignore[arg-type, return-value]
    summary = {
        "segments": {n: len(sets[n]) for n in names},
        "audio_s": audio_s,
        "results": results,
        "better_than_draft_everywhere": better,
        "chosen": chosen,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
