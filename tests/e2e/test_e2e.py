"""End to end: the bundled recording, played in real time, becomes final captions in the store.

Every process is real and separate: mosquitto, the Kafka-protocol broker, bridge, transcription
worker, reconciler, dashboard and agent, all started by ``edgecap demo``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import SAMPLES_DIR
from devtools.brokers import free_port
from devtools.wer import wer

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.models]


def test_sample_recording_to_final_captions_in_the_store(tmp_path: Path, models_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "edgecap.cli", "demo", "--until-done", "--timeout", "240",
         "--models-dir", str(models_dir), "--port", str(free_port()), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{logs}"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    reference = (SAMPLES_DIR / "sample.txt").read_text()
    utterances = len(json.loads((SAMPLES_DIR / "sample.json").read_text())["utterances"])

    assert summary["input_done"] is True  # the agent said its input ended (the demo did not guess)
    assert summary["segments"] == utterances
    assert summary["finals"] == summary["segments"] and summary["lost"] == 0
    assert summary["wer_final"] <= 0.10
    assert summary["draft_latency_ms_p50"] > 0 and summary["final_latency_ms_p50"] > 0

    # The store itself, not only the summary: one row per segment, each with draft and final.
    from cloud.store import Store

    store = Store(f"sqlite:///{tmp_path / 'edgecap.db'}")
    rows = sorted(store.list_segments(limit=1000), key=lambda r: r["seq"])
    store.close()
    assert len(rows) == utterances
    assert all(r["draft"] and r["final"] for r in rows)
    assert [r["seq"] for r in rows] == list(range(utterances))
    assert wer(reference, " ".join(r["final"]["text"] for r in rows)) <= 0.10

    # The agent saw the finals come back and replaced its drafts in the SRT file.
    assert summary["finals_on_device"] == utterances
    captions = [json.loads(x) for x in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == utterances
    assert all(c["version"] == 2 and [v["version"] for v in c["versions"]] == [1, 2] for c in captions)
    assert "-->" in (tmp_path / "captions" / "captions.srt").read_text()
    assert (tmp_path / "captions" / "captions.vtt").read_text().startswith("WEBVTT")
