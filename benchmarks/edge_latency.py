"""End of an utterance → its caption on the device, through the real agent process, in real time.

    .venv/bin/python benchmarks/edge_latency.py [--engine webrtc|silero] [--pause-ms 150]
        [--early-window-s 10 | --full-window] [--models-dir DIR]

Makes a Piper recording of 16 utterances of 1-10 s with reference timings, starts mosquitto and
``python -m edge_agent --input <wav>`` (real-time pacing, pinned to 2 cores with ``taskset -c 0,1``
when available), and reads the agent's caption event log. The recording's start on the agent's
clock is found exactly by running the same VAD offline: a segment's capture time minus its offset
in the file. For each utterance, latency = when the first caption covering its end was produced −
(recording start + reference end of the utterance); captions are matched to utterances by time
overlap. Prints progress lines, then one JSON line: ``latency_ms_p50``, ``latency_ms_p95``,
``latency_ms_max``, ``rss_mb`` (agent peak RSS, VmHWM), ``utterances``, ``matched``,
``wer_first_shown`` (the captions as first shown) and ``wer_drafts`` (the committed drafts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.vad import ENGINES as VAD_ENGINES  # noqa: E402
from runtime.settings import models_dir as default_models_dir  # noqa: E402

SENTENCES = [
    "Good morning.",
    "Turn left at the next corner.",
    "The train leaves from platform four in ten minutes.",
    "Thank you very much.",
    "She keeps her bicycle in the shed next to the old apple tree.",
    "Could you pass me the salt please?",
    "We walked along the beach until the sun went down behind the hills and the air turned cold.",
    "Yes, of course.",
    "The library closes early on Fridays, so bring your books back before noon.",
    "My grandmother baked bread every morning and the whole house smelled of it.",
    "Open the window.",
    "The children built a small boat from wood and paper and sailed it across the pond behind the school "
    "while their teacher watched from the bench and the ducks swam away in a hurry.",
    "It is raining again.",
    "He forgot his keys at the office and had to wait outside until his sister came home.",
    "Let us meet at the cafe on the corner at half past three.",
    "The farmer counted his sheep twice because one of them was hiding behind the barn near the river, "
    "and he only found it when the rain started and the little lamb came running back to its mother.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_recording(workdir: Path) -> Any:
    from devtools.speech import synthesize

    rec = synthesize(SENTENCES, workdir / "talk.wav", voice="piper", gap_s=(0.9, 1.5), seed=11, lead_s=1.0)
    durations = [u.end_s - u.start_s for u in rec.utterances]
    print(f"recording: {len(durations)} utterances, {min(durations):.1f}-{max(durations):.1f} s each, "
          f"{rec.duration_s:.1f} s in all", flush=True)
    return rec


def agent_config(args: argparse.Namespace, workdir: Path, port: int) -> Path:
    models = Path(args.models_dir).expanduser()
    vad = [f'engine = "{args.engine}"', f"pause_ms = {args.pause_ms}"]
    if args.engine == "silero":
        vad.append(f'model_path = "{models / "vad" / "silero_vad.onnx"}"')
    if args.early_window_s is not None:
        vad.append(f"early_window_s = {args.early_window_s}")
    else:
        vad.append("early_window_s = 30")
    config = workdir / "agent.toml"
    config.write_text(
        'agent_id = "bench-1"\nheartbeat_s = 5\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[asr]\nmodel_dir = "{models / "tiny.en" / "onnx-int8"}"\nthreads = 2\n'
        f'[outbox]\npath = "{workdir / "outbox.sqlite3"}"\n'
        f'[captions]\ndir = "{workdir / "captions"}"\nterminal = false\nwrite_interval_s = 0.5\n'
        "[vad]\n" + "\n".join(vad) + "\n"
    )
    return config


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_agent(args: argparse.Namespace, rec: Any, workdir: Path) -> float:
    from devtools.brokers import Mosquitto

    with Mosquitto() as broker:
        config = agent_config(args, workdir, broker.port)
        cmd = [sys.executable, "-m", "edge_agent", "--config", str(config), "--input", str(rec.path)]
        if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
            cmd = ["taskset", "-c", "0,1", *cmd]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        log = (workdir / "agent.log").open("w")
        print("agent: " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + rec.duration_s + 60
        events = workdir / "captions" / "captions.events.jsonl"
        last = rec.duration_s + 3.0
        rss = 0.0
        try:
            started = None
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
                rss = max(rss, peak_rss_mb(proc.pid))
                if started is None and events.exists():
                    started = time.monotonic()
                if started is not None and time.monotonic() - started > last:
                    break
            rss = max(rss, peak_rss_mb(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            sys.stderr.write((workdir / "agent.log").read_text()[-3000:])
        return rss


def recording_start(args: argparse.Namespace, rec: Any, drafts: list[dict[str, Any]]) -> float:
    """The agent's capture time of the file's first sample: same VAD offline, same segments."""
    import soundfile as sf

    from edge_agent.settings import VadSettings
    from edge_agent.vad import create_segmenter

    settings = {"engine": args.engine, "pause_ms": args.pause_ms}
    if args.engine == "silero":
        settings["model_path"] = Path(args.models_dir).expanduser() / "vad" / "silero_vad.onnx"
    vad = create_segmenter(VadSettings(**settings))
    pcm = sf.read(str(rec.path), dtype="int16")[0].tobytes()
    offline = [seg.started_at for seg in vad.feed(pcm, 0.0) + vad.flush()]
    online = sorted({d["segment_id"]: d["started_at"] for d in drafts}.values())
    shift = online[0] - offline[0]
    exact = sum(any(abs(s - shift - o) < 0.001 for o in offline) for s in online)
    print(f"recording start found: {exact} of {len(online)} segment starts agree with the offline VAD", flush=True)
    return shift


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=VAD_ENGINES.names(), default="webrtc")
    parser.add_argument("--pause-ms", type=int, default=90)
    parser.add_argument("--early-window-s", type=float, default=10.0)
    parser.add_argument("--full-window", action="store_true", help="early drafts with the full 30 s window")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--keep", action="store_true", help="keep the work folder (named on stderr)")
    args = parser.parse_args()
    if args.full_window:
        args.early_window_s = None
    workdir = Path(tempfile.mkdtemp(prefix="edgecap-latency-"))
    sys.stderr.write(f"work folder: {workdir}\n")
    try:
        rec = make_recording(workdir)
        rss = run_agent(args, rec, workdir)
        lines = (workdir / "captions" / "captions.events.jsonl").read_text().splitlines()
        drafts = [e for e in map(json.loads, lines) if e.get("event") == "draft"]
        start = recording_start(args, rec, drafts)
        latencies, first_texts, detect, compute = [], [], [], []
        for i, utt in enumerate(rec.utterances):
            begin, end = start + utt.start_s, start + utt.end_s
            covering = [d for d in drafts if d["started_at"] < end and d["ended_at"] >= end - 0.05
                        and d["ended_at"] > begin]
            if not covering:
                print(f"utterance {i}: no caption", flush=True)
                continue
            first = min(covering, key=lambda d: d["produced_at"])
            ms = (first["produced_at"] - end) * 1000
            latencies.append(ms)
            detect.append((first["ended_at"] - end) * 1000)  # audio after the utterance in the first draft
            compute.append((first["produced_at"] - first["ended_at"]) * 1000)  # waiting + transcribing
            first_texts.append(first["text"])
            print(f"utterance {i}: {utt.end_s - utt.start_s:4.1f} s, caption after {ms:6.0f} ms: {first['text']!r}",
                  flush=True)
        last_per_segment: dict[str, dict[str, Any]] = {}
        for d in drafts:
            last_per_segment[d["segment_id"]] = d
        committed = sorted(last_per_segment.values(), key=lambda d: d["started_at"])
        from devtools.wer import wer

        result = {
            "engine": args.engine,
            "pause_ms": args.pause_ms,
            "early_window_s": args.early_window_s,
            "utterances": len(rec.utterances),
            "matched": len(latencies),
            "segments": len(committed),
            "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
            "latency_ms_p95": round(percentile(latencies, 0.95), 1) if latencies else None,
            "latency_ms_max": round(max(latencies), 1) if latencies else None,
            "detect_ms_p50": round(statistics.median(detect), 1) if detect else None,
            "compute_ms_p50": round(statistics.median(compute), 1) if compute else None,
            "rss_mb": round(rss, 1),
            "wer_first_shown": round(wer(rec.text, " ".join(first_texts)), 4),
            "wer_drafts": round(wer(rec.text, " ".join(d["text"] for d in committed)), 4),
        }
        print(json.dumps(result))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
