"""End-to-end figures of the local pipeline: ``edgecap demo --until-done`` run several times.

    .venv/bin/python benchmarks/pipeline.py --runs 3 [--input talk.wav --reference talk.txt]

Prints one line per run and, last, one JSON line with the medians of draft latency (end of
utterance → caption on the device), final latency (end of utterance → final in the store), WERs,
and the worst `lost` over all runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.brokers import free_port
from runtime.settings import models_dir as default_models_dir


def run_once(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgecap-bench-") as workdir:
        cmd = [sys.executable, "-m", "edgecap.cli", "demo", "--until-done", "--workdir", workdir,
               "--port", str(free_port()), "--models-dir", args.models_dir]
        if args.input:
            cmd += ["--input", args.input]
        if args.reference:
            cmd += ["--reference", args.reference]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--input")
    parser.add_argument("--reference")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        summary = run_once(args)
        print(f"run {i + 1}: {json.dumps(summary)}", flush=True)
        runs.append(summary)

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    result = {
        "runs": len(runs),
        "segments": median("segments"),
        "lost_max": max(r["lost"] for r in runs),
        **{f"{k}_median": median(k) for k in
           ("draft_latency_ms_p50", "final_latency_ms_p50", "wer_draft", "wer_final")},
    }
    print(json.dumps(result))
    return 0 if result["lost_max"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
