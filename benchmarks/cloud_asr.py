"""The cloud transcriber's throughput and quality: packing, faster-whisper's batched pipeline, drafts and finals.

    .venv/bin/python benchmarks/cloud_asr.py [--reps 3] [--texts N] [--models-dir DIR] [--threads 2]

Corpus: the speech generator's three sets (``clean``: the bundled sample and Piper's voice,
``noisy``: Piper at 10 dB SNR of white noise, ``espeak``), cut into segments by the agent's own
VAD, as ``benchmarks/cloud_model_choice.py`` makes them; segments of 0.5 to 28 s are kept.

Engines, each on the same segments, the demo's cloud model (``cloud.settings.CLOUD_MODEL``, beam
``CLOUD_BEAM_SIZE``), int8, ``--threads`` threads, interleaved pass by pass (``--reps`` passes):

- ``packed``: our ctranslate2 engine as the worker runs it (batches of ``--batch`` segments, 32 by
  default, in the order they were spoken, as a backlog reaches the worker; packing on);
- ``padded``: the same, packing off (each segment padded alone to 30 s, batched);
- ``single``: the same engine, one segment at a time;
- ``fw_batched``: faster-whisper's own ``BatchedInferencePipeline`` on the same CTranslate2
  weights: all segments of a pass as one audio with ``clip_timestamps`` (its VAD off), its
  ``batch_size`` as ours, the same beam, no temperature fallback, no timestamps;
- ``transformers``: the transformers engine (the reference), fp32, batches as ours.

Speed is audio seconds per CPU second (this process's user+system time, all threads: steadier than
the wall clock on a shared machine), median over the passes; wall-clock figures too. WER (jiwer,
normalised) over each set's segments joined. ``packed_vs_single`` (target >= 4) and
``wer_delta_points`` (packed minus single, target <= +0.3: the mean over ``--orders`` orders of the
segments, the spoken one and seeded shuffles, since which segments share a window moves a few
words either way: ``wer_delta_points_by_order``); ``vs_faster_whisper_batched`` (packed
over fw_batched, target >= 1.5). Draft: the agent's int8 ONNX tiny.en as it commits drafts
(``benchmarks/edge_asr.py``); final: ``cloud.rule.reconcile`` of each segment's packed cloud
transcript (the worker's default: ``padded`` unless packing is on by default) with its draft;
``final_minus_best_points`` per set (final WER minus the better of draft and cloud, target <= 0)
and how often each rule reason fired; the same for the packed transcripts (``…_packed``).
``stage_cpu_s``: the CPU seconds of the model's encode, generate and align calls in the last pass,
which bound what packing can gain (it shares the encoder's windows; the decoder's tokens stay).

With a CUDA device and a prepared ``large-v3`` (``<models-dir>/large-v3/ct2``), it also times
large-v3 in float16, packed vs padded, in audio seconds per GPU (wall) second (``gpu`` key; not run
on a machine without CUDA). Prints progress lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.cloud_model_choice import TEXTS, corpus, drafts  # noqa: E402
from runtime.settings import models_dir as default_models_dir  # noqa: E402

RATE = 16000
MIN_S, MAX_S = 0.5, 28.0
BATCH = 32
GAP_S = 1.0  # between segments in faster-whisper's one audio (never inside a clip)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Ct2:
    """Our ctranslate2 engine, batched as the worker does (or one at a time): batches of ``batch``
    segments in the order given."""

    def __init__(self, models_dir: Path, model: str, threads: int, packing: bool, batch: int | None,
                 **settings: Any) -> None:  # fmt: skip
        from cloud.asr import create_engine
        from cloud.settings import WorkerSettings

        self.settings = WorkerSettings(engine="ctranslate2", model_dir=models_dir / model, threads=threads,
                                       packing=packing, **settings)  # fmt: skip
        self.engine: Any = create_engine(self.settings)
        self.batch = batch or self.settings.batch_size
        self.engine.transcribe_batch([np.zeros(RATE, np.float32)])
        self.windows, self.padding_s, self.redone = 0, 0.0, 0
        self.stages: dict[str, float] = {}
        """CPU seconds in the model's ``encode``, ``generate`` and ``align`` calls (the last pass)."""
        self.engine.model = _Timed(self.engine.model, self.stages)

    def __call__(self, audios: list[np.ndarray]) -> list[Any]:
        out: list[Any] = []
        self.windows, self.padding_s, self.redone = 0, 0.0, 0
        self.stages.clear()
        for at in range(0, len(audios), self.batch):
            out += self.engine.transcribe_batch(audios[at : at + self.batch])
            self.windows += self.engine.last_windows
            self.padding_s += self.engine.last_padding_s
            self.redone += getattr(self.engine, "last_retried", 0)
        return out


class _Timed:
    """A ``ctranslate2.models.Whisper`` whose encode, generate and align calls add their CPU seconds to ``stages``."""

    def __init__(self, model: Any, stages: dict[str, float]) -> None:
        self._model, self._stages = model, stages

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._model, name)
        if name not in ("encode", "generate", "align"):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = cpu_seconds()
            try:
                return method(*args, **kwargs)
            finally:
                self._stages[name] = self._stages.get(name, 0.0) + cpu_seconds() - started

        return timed


class Transformers(Ct2):
    def __init__(self, models_dir: Path, model: str, threads: int, beam_size: int, batch: int) -> None:
        from cloud.asr import create_engine
        from cloud.settings import WorkerSettings

        self.settings = WorkerSettings(engine="transformers", model_dir=models_dir / model, threads=threads,
                                       beam_size=beam_size)  # fmt: skip
        self.engine = create_engine(self.settings)
        self.batch = batch or self.settings.batch_size
        self.engine.transcribe_batch([np.zeros(RATE, np.float32)])
        self.stages = {}


class FasterWhisperBatched:
    """faster-whisper's ``BatchedInferencePipeline``: the segments as clips of one audio."""

    def __init__(self, models_dir: Path, model: str, threads: int, beam_size: int, batch: int) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(str(models_dir / model / "ct2"), device="cpu", compute_type="int8",
                                  cpu_threads=threads)  # fmt: skip
        self.pipeline = BatchedInferencePipeline(self.model)
        self.beam_size, self.batch = beam_size, batch
        self([np.zeros(RATE, np.float32)])

    def __call__(self, audios: list[np.ndarray]) -> list[str]:
        gap = np.zeros(int(GAP_S * RATE), np.float32)
        pieces, clips, at = [], [], 0
        for a in audios:
            pieces += [a, gap]
            clips.append({"start": at / RATE, "end": (at + a.size) / RATE})
            at += a.size + gap.size
        segments, _ = self.pipeline.transcribe(
            np.concatenate(pieces), language="en", beam_size=self.beam_size, batch_size=self.batch,
            temperature=[0.0], without_timestamps=True, vad_filter=False, clip_timestamps=clips,
        )  # fmt: skip
        texts = [""] * len(audios)
        starts = [c["start"] for c in clips]
        for s in segments:  # each clip's text comes back as a segment starting at the clip's offset
            k = max(0, int(np.searchsorted(starts, s.start + 1e-3)) - 1)
            texts[k] = (texts[k] + " " + s.text.strip()).strip()
        return texts


def text_of(result: Any) -> str:
    return result if isinstance(result, str) else result.text


def finals(transcripts: list[Any], draft_texts: list[str]) -> tuple[list[str], Counter[str]]:
    """The reconciler's final text of each segment, and the reasons."""
    from cloud.rule import reconcile
    from contracts import CloudTranscript

    out, reasons = [], Counter[str]()
    now = time.time()
    for k, (t, draft) in enumerate(zip(transcripts, draft_texts, strict=True)):
        cloud = CloudTranscript(agent_id="bench", segment_id=f"s-{k}", seq=k, started_at=now - 2, ended_at=now - 1,
                                transcript=t, worker="bench")  # fmt: skip
        final = reconcile(cloud, draft)
        out.append(final.text)
        reasons[final.reason or "none"] += 1
    return out, reasons


def gpu_figures(models_dir: Path, audios: list[np.ndarray], reps: int) -> dict[str, Any] | None:
    """large-v3 float16 on CUDA, packed vs padded (audio seconds per GPU wall second). Untested here."""
    import ctranslate2

    weights = models_dir / "large-v3" / "ct2"
    if ctranslate2.get_cuda_device_count() == 0:
        return None
    if not (weights / "model.bin").is_file():
        return {"skipped": f"no large-v3 in {weights}"}
    audio_s = sum(a.size for a in audios) / RATE
    out: dict[str, Any] = {"model": "large-v3", "compute_type": "float16"}
    for name, packing in (("packed", True), ("padded", False)):
        engine = Ct2(models_dir, "large-v3", 1, packing, 16, device="cuda", compute_type="float16",
                     beam_size=5, language="en")  # fmt: skip
        walls = []
        for _ in range(reps):
            started = time.perf_counter()
            engine(audios)
            walls.append(time.perf_counter() - started)
        out[f"{name}_audio_s_per_gpu_s"] = round(audio_s / statistics.median(walls), 1)
        engine.engine.close()
    out["packed_vs_padded"] = round(out["packed_audio_s_per_gpu_s"] / out["padded_audio_s_per_gpu_s"], 2)
    return out


def main() -> int:
    from cloud.settings import CLOUD_BEAM_SIZE, CLOUD_MODEL
    from devtools.wer import wer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--texts", type=int, default=len(TEXTS), help="sentences per set (a subset: fewer)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--orders", type=int, default=4, help="segment orders packed for the WER delta")
    parser.add_argument(
        "--batch",
        type=int,
        default=BATCH,
        help="segments per engine call (packing fills its "
        "windows better the more segments a call has: deploy it with batch_size as large)",
    )
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--skip", nargs="*", default=[], help="engines to leave out (e.g. transformers)")
    args = parser.parse_args()
    models_dir = Path(args.models_dir).expanduser()

    with tempfile.TemporaryDirectory(prefix="edgecap-cloud-asr-") as tmp:
        raw = corpus(Path(tmp), TEXTS[: args.texts])
    sets = {n: [(a, t) for a, t in segs if MIN_S <= a.size / RATE <= MAX_S] for n, segs in raw.items()}
    names = list(sets)
    audios = [a for n in names for a, _ in sets[n]]
    refs = [t for n in names for _, t in sets[n]]
    bounds, at = {}, 0
    for n in names:
        bounds[n] = (at, at + len(sets[n]))
        at += len(sets[n])
    audio_s = sum(a.size for a in audios) / RATE
    lengths = sorted(a.size / RATE for a in audios)
    print(f"{len(audios)} segments, {audio_s:.1f} s of audio, {lengths[0]:.1f}-{lengths[-1]:.1f} s", flush=True)

    draft_texts, _ = drafts(models_dir, audios)
    model, beam = CLOUD_MODEL, CLOUD_BEAM_SIZE
    engines: dict[str, Callable[[list[np.ndarray]], list[Any]]] = {
        "packed": Ct2(models_dir, model, args.threads, True, args.batch, beam_size=beam, language="en"),
        "padded": Ct2(models_dir, model, args.threads, False, args.batch, beam_size=beam, language="en"),
        "single": Ct2(models_dir, model, args.threads, False, 1, beam_size=beam, language="en"),
    }
    batch = engines["packed"].batch  # type: ignore[attr-defined]
    engines["fw_batched"] = FasterWhisperBatched(models_dir, model, args.threads, beam, batch)
    if "transformers" not in args.skip and (models_dir / model / "hf").is_dir():
        engines["transformers"] = Transformers(models_dir, model, args.threads, beam, batch)
    for name in args.skip:
        engines.pop(name, None)

    cpu: dict[str, list[float]] = {n: [] for n in engines}
    wall: dict[str, list[float]] = {n: [] for n in engines}
    results: dict[str, list[Any]] = {}
    for rep in range(args.reps):
        order = list(engines) if rep % 2 == 0 else list(reversed(engines))
        for name in order:
            c0, w0 = cpu_seconds(), time.perf_counter()
            results[name] = engines[name](audios)
            cpu[name].append(cpu_seconds() - c0)
            wall[name].append(time.perf_counter() - w0)
        print(f"pass {rep + 1}: " + ", ".join(f"{n} {audio_s / cpu[n][-1]:.1f} audio s/CPU s" for n in engines),
              flush=True)  # fmt: skip

    def wers(texts: list[str]) -> dict[str, float]:
        out = {n: round(wer(" ".join(refs[lo:hi]), " ".join(texts[lo:hi])), 4) for n, (lo, hi) in bounds.items()}
        out["all"] = round(wer(" ".join(refs), " ".join(texts)), 4)
        return out

    packed_engine: Any = engines["packed"]
    packed_stats = {  # the spoken order's, before the shuffled orders run
        "packed_windows": packed_engine.windows,
        "packed_padding_s_per_audio_s": round(packed_engine.padding_s / audio_s, 3),
        "padded_padding_s_per_audio_s": round(engines["padded"].padding_s / audio_s, 3),  # type: ignore[attr-defined]
        "packed_redone_alone": packed_engine.redone,
        "stage_cpu_s": {
            n: {k: round(v, 2) for k, v in e.stages.items()}  # type: ignore[attr-defined]
            for n, e in engines.items()
            if n in ("packed", "padded", "single")
        },
    }
    packed_runs = [results["packed"]]  # other orders of the same segments: other windows
    for seed in range(1, args.orders):
        order = np.random.default_rng(seed).permutation(len(audios))
        shuffled = engines["packed"]([audios[i] for i in order])
        unshuffled: list[Any] = [None] * len(audios)
        for position, i in enumerate(order):
            unshuffled[i] = shuffled[position]
        packed_runs.append(unshuffled)
    speed = {n: round(audio_s / statistics.median(cpu[n]), 2) for n in engines}
    speed_wall = {n: round(audio_s / statistics.median(wall[n]), 2) for n in engines}
    texts = {n: [text_of(r) for r in results[n]] for n in engines}
    wer_by = {n: wers(texts[n]) for n in engines}
    wer_by["draft"] = wers(draft_texts)
    from cloud.settings import WorkerSettings

    cloud_name = "packed" if WorkerSettings().packing else "padded"  # what the worker runs by default
    deltas: dict[str, list[float]] = {n: [] for n in [*names, "all"]}
    for run in packed_runs:
        packed_wer = wers([text_of(r) for r in run])
        for n in deltas:
            deltas[n].append(100 * (packed_wer[n] - wer_by["single"][n]))
    final_texts, reasons = finals(results[cloud_name], draft_texts)
    wer_by["final"] = wers(final_texts)
    final_packed, reasons_packed = finals(results["packed"], draft_texts)
    wer_by["final_packed"] = wers(final_packed)
    summary: dict[str, Any] = {
        "segments": {n: len(sets[n]) for n in names},
        "audio_s": round(audio_s, 1),
        "segment_s": [round(lengths[0], 2), round(statistics.median(lengths), 2), round(lengths[-1], 2)],
        "model": model,
        "beam_size": beam,
        "threads": args.threads,
        "batch": batch,
        "reps": args.reps,
        "audio_s_per_cpu_s": speed,
        "audio_s_per_wall_s": speed_wall,
        "packed_vs_single": round(speed["packed"] / speed["single"], 2),
        "packed_vs_padded": round(speed["packed"] / speed["padded"], 2),
        "wer_delta_points": round(statistics.mean(deltas["all"]), 2),
        "wer_delta_points_per_set": {n: round(statistics.mean(deltas[n]), 2) for n in names},
        "wer_delta_points_by_order": [round(d, 2) for d in deltas["all"]],
        "vs_faster_whisper_batched": round(speed["packed"] / speed["fw_batched"], 2) if "fw_batched" in speed else None,
        **packed_stats,
        "wer": wer_by,
        "cloud_default": cloud_name,
        "final_minus_best_points": {
            n: round(100 * (wer_by["final"][n] - min(wer_by["draft"][n], wer_by[cloud_name][n])), 2) for n in names
        },
        "rule_reasons": dict(reasons),
        "final_packed_minus_best_points": {
            n: round(100 * (wer_by["final_packed"][n] - min(wer_by["draft"][n], wer_by["packed"][n])), 2) for n in names
        },
        "rule_reasons_packed": dict(reasons_packed),
        "gpu": gpu_figures(models_dir, audios, args.reps),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
