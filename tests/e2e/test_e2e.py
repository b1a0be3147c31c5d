"""End to end: the bundled recording, played in real time, becomes final captions in the store, and
photographs played by the agent's camera become boxes in the store and on the dashboard's routes.

Every process is real and separate: mosquitto, the Kafka-protocol broker, bridge, transcription
worker, reconciler, detection worker, dashboard and agent, all started by ``edgecap demo``.
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
from edgecap.demo import DEMO_PHOTOS

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
    seqs = [r["seq"] for r in rows]  # one sequence per device: the camera's frames take numbers too
    assert len(set(seqs)) == utterances and all(0 <= seq < utterances + len(DEMO_PHOTOS) for seq in seqs)
    assert wer(reference, " ".join(r["final"]["text"] for r in rows)) <= 0.10

    # The agent saw the finals come back and replaced its drafts in the SRT file.
    assert summary["finals_on_device"] == utterances
    captions = [json.loads(x) for x in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == utterances
    assert all(c["version"] == 2 and [v["version"] for v in c["versions"]] == [1, 2] for c in captions)
    assert "-->" in (tmp_path / "captions" / "captions.srt").read_text()
    assert (tmp_path / "captions" / "captions.vtt").read_text().startswith("WEBVTT")

    # The camera: scikit-image's photographs, each sent once, each stored once with its object found
    # where it is, and served by the dashboard's routes.
    from fastapi.testclient import TestClient
    from photos import MIN_IOU, PHOTOS, expected_box, iou
    from support import dashboard_user

    from cloud.dashboard.app import create_app
    from cloud.settings import DashboardSettings
    from edgecap.demo import AGENT_ID

    assert summary["frames_expected"] == len(DEMO_PHOTOS) == summary["frames_stored"]
    store = Store(f"sqlite:///{tmp_path / 'edgecap.db'}")
    try:
        _, viewer = dashboard_user(store, "viewer")
        app = create_app(DashboardSettings(store_url=f"sqlite:///{tmp_path / 'edgecap.db'}"), store)
        client = TestClient(app, headers=viewer)
        listed = client.get("/api/frames", params={"agent_id": AGENT_ID}).json()
        assert len(listed) == len(DEMO_PHOTOS)  # one result per frame: nothing lost, nothing twice
        for name, frame in zip(sorted(DEMO_PHOTOS), sorted(listed, key=lambda f: f["seq"]), strict=True):
            label = PHOTOS[name][0]
            boxes = [b for b in frame["boxes"] if b["label"] == label]
            assert boxes, (name, frame["boxes"])
            drawn = expected_box(name, frame["width"], frame["height"])
            assert max(iou((b["x1"], b["y1"], b["x2"], b["y2"]), drawn) for b in boxes) >= MIN_IOU, (name, boxes)
            one = client.get(f"/api/frames/{AGENT_ID}/{frame['frame_id']}").json()
            assert one["boxes"] == frame["boxes"]
            image = client.get(frame["image_url"])
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
            assert image.content[:2] == b"\xff\xd8"
        # the agent's statuses came up through the bridge: the fleet knows it, and in its history the
        # status that said its input was done (its last, offline one may reach the cloud after the
        # demo stopped its reconciler: not asserted)
        (agent,) = [a for a in client.get("/api/agents").json() if a["agent_id"] == AGENT_ID]
        assert agent["disagreement"], agent
        history = client.get(f"/api/agents/{AGENT_ID}").json()["history"]
        assert any(h["online"] and h["input_done"] for h in history), history[:3]
        # each segment can be heard: its audio as the device sent it (Ogg Opus)
        for row in rows:
            audio = client.get(f"/api/segments/{AGENT_ID}/{row['segment_id']}/audio")
            assert audio.status_code == 200 and audio.content[:4] == b"OggS", row["segment_id"]
        cats = client.get("/api/frames", params={"label": "cat"}).json()
        assert [f["seq"] for f in cats] == [sorted(listed, key=lambda f: f["seq"])[2]["seq"]]  # chelsea.png
    finally:
        store.close()
