"""Audio files uploaded as jobs: the dashboard's route → Kafka → the transcriber and reconciler
processes (``edgecap worker``, Whisper tiny.en) → store → the job's transcript, timed in the file."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import uvicorn
from cloud_procs import cloud_worker
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from support import PASSWORD, dashboard_user, wait_until

from cloud.dashboard.app import create_app
from cloud.settings import DashboardSettings, WorkerSettings
from cloud.store import Store
from devtools import SAMPLES_DIR
from devtools.brokers import Tansu, free_port, wait_for_port
from devtools.wer import wer
from runtime.settings import KafkaSettings

SAMPLE = SAMPLES_DIR / "sample.wav"
REFERENCE = (SAMPLES_DIR / "sample.txt").read_text(encoding="utf-8")


def sample_as(container: str, codec: str, rate: int = 16000, channels: int = 1, seconds: float | None = None) -> bytes:
    """The bundled recording (24.6 s, six sentences) re-encoded: another container, rate, channel count."""
    samples, source_rate = soundfile.read(SAMPLE, dtype="float32")
    if seconds is not None:
        samples = samples[: int(seconds * source_rate)]
    samples = soxr.resample(samples, source_rate, rate)
    if channels == 2:
        samples = np.stack([samples, 0.5 * samples], axis=1)
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=container, subtype=codec)
    return out.getvalue()


def in_the_browser(app: object, store: Store, tmp_path: Path) -> None:
    """The same upload through the Upload page in Debian's Chromium: the file dropped, its progress,
    then its transcript, where a click on a word seeks the player to the word's time in the file."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed (Debian package chromium)")
    user, _ = dashboard_user(store, "admin")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))  # type: ignore[arg-type]
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    wait_for_port(port, 10)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/login")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"http://127.0.0.1:{port}/")
                page.goto(f"http://127.0.0.1:{port}/upload")
                page.set_input_files("#file", str(SAMPLE))
                page.wait_for_selector("#upload-status:has-text('done: 6 segment(s)')", timeout=240_000)
                first = page.locator("#words .word").first  # "The", the recording's first word
                assert (first.text_content() or "").strip() == "The"
                start = float(first.get_attribute("data-start") or "nan")
                assert 0 <= start < 1.5
                last = page.locator("#words .word").last
                late = float(last.get_attribute("data-start") or "nan")
                assert late > 20, "the last word lies near the end of the 24.6 s file"
                last.click()
                page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {late}) < 0.05")
                shots = os.environ.get("EDGECAP_SCREENSHOTS")
                page.screenshot(path=str(Path(shots) / "upload-audio.png" if shots else tmp_path / "upload-audio.png"))
            finally:
                browser.close()
    finally:
        server.should_exit = True
        serving.join(10)


def refused(outcome: str) -> float:
    return REGISTRY.get_sample_value("edgecap_dashboard_jobs_total", {"outcome": outcome}) or 0.0


@pytest.fixture(scope="module")
def broker() -> Iterator[Tansu]:
    """This module's own broker: its workers' new groups read the segments topic from the start."""
    with Tansu() as b:
        yield b


@pytest.mark.integration
def test_an_uploaded_recording_comes_back_as_a_transcript_timed_in_the_file(
    broker: Tansu, models_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    bus = KafkaSettings(bootstrap_servers=broker.bootstrap)
    workers = WorkerSettings(kafka=bus, store_url=url, model_dir=models_dir / "tiny.en", threads=1, beam_size=1,
                             session_timeout_ms=3000, topic_partitions=2, max_wait_ms=500)  # fmt: skip
    services = [cloud_worker("transcribe", workers, tmp_path), cloud_worker("reconcile", workers, tmp_path)]
    for service in services:
        service.start()

    def logs() -> str:
        return "\n".join(s.log_tail() for s in services)

    try:
        _, admin = dashboard_user(store, "admin")
        app = create_app(DashboardSettings(store_url=url, kafka=bus), store)
        with TestClient(app, headers=admin) as client:  # its lifespan closes the jobs' producer
            mp3 = sample_as("MP3", "MPEG_LAYER_III", rate=44100, channels=2)  # resampled and mixed down
            answer = client.post("/api/jobs", params={"name": "talk.mp3"}, content=mp3)
            assert answer.status_code == 202, answer.text
            created = answer.json()
            assert created["segments"] == 6 and created["agent_id"] == "upload"  # one per sentence
            assert created["url"] == f"/api/jobs/{created['job_id']}"
            assert abs(created["duration_s"] - soundfile.info(SAMPLE).duration) < 0.05

            def done() -> bool:
                return bool(client.get(created["url"]).json()["progress"]["done"])

            wait_until(done, 240, "every segment of the job with its final", every_s=0.5, detail=logs)
            job = client.get(created["url"]).json()
            assert job["progress"] == {"finals": 6, "segments": 6, "done": True}
            assert (job["name"], job["format"], job["kind"]) == ("talk.mp3", "MP3 MPEG_LAYER_III", "audio")
            assert wer(REFERENCE, job["text"]) <= 0.15, job["text"]
            words = [w for s in job["segments"] for w in s["words"]]
            assert wer(REFERENCE, " ".join(w["word"] for w in words)) <= 0.15
            starts = [w["start"] for w in words]
            assert starts == sorted(starts) and all(0 <= w["start"] <= w["end"] <= job["duration_s"] for w in words)
            # each sentence's first word lies where the recording's own timing puts the sentence
            utterances = json.loads((SAMPLES_DIR / "sample.json").read_text(encoding="utf-8"))["utterances"]
            meta = [(u["start_s"], u["end_s"]) for u in utterances]
            for segment, (start_s, end_s) in zip(job["segments"], meta, strict=True):
                assert segment["final"]["reason"] == "no_draft" and segment["final"]["source"] == "cloud"
                first, last = segment["words"][0], segment["words"][-1]
                assert abs(first["start"] - start_s) < 0.5 and abs(last["end"] - end_s) < 0.7, (segment, start_s)
                row = store.get((segment["agent_id"], segment["segment_id"]))
                assert row is not None and abs(row["started_at"] - job["origin_at"] - segment["offset_s"]) < 1e-3
                played = client.get(segment["audio_url"])
                assert played.status_code == 200 and played.content[:4] == b"OggS"  # kept, as the agent sends it
            listed = client.get("/api/jobs").json()
            assert listed[0]["job_id"] == created["job_id"] and listed[0]["progress"]["done"]

            in_the_browser(app, store, tmp_path)

            silence = io.BytesIO()
            soundfile.write(silence, np.zeros(32000, np.float32), 16000, format="WAV")
            before = refused("refused_422")
            quiet = client.post("/api/jobs", content=silence.getvalue())
            assert quiet.status_code == 422 and "no speech" in quiet.json()["detail"]
            assert refused("refused_422") == before + 1
    finally:
        for service in services:
            service.stop()
        store.close()


def test_audio_that_cannot_be_taken_is_refused_with_its_reason(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    settings = DashboardSettings(store_url="sqlite://", max_job_bytes=600_000, max_job_s=20.0)
    app = create_app(settings, store)
    _, admin = dashboard_user(store, "admin")
    _, viewer = dashboard_user(store, "viewer")
    wav = sample_as("WAV", "PCM_16", seconds=10)
    flac = sample_as("FLAC", "PCM_16", seconds=10)
    cases = {
        "noise": (b"\x00\x01" * 5000, 415, "not an audio file"),
        "aiff": (sample_as("AIFF", "PCM_16", seconds=2), 415, "only WAV, FLAC, Ogg Vorbis, Ogg Opus and MP3"),
        "truncated": (flac[: len(flac) // 2], 422, "does not decode"),
        "truncated mp3": (sample_as("MP3", "MPEG_LAYER_III", seconds=10)[:20_000], 422, "truncated"),
        "too long": (sample_as("OGG", "VORBIS"), 413, "over 20 s"),  # 24.6 s, small in bytes
        "too large": (sample_as("WAV", "PCM_16"), 413, "over 600000 bytes"),
    }
    with TestClient(app, headers=admin) as client:
        for name, (body, status, detail) in cases.items():
            before = refused(f"refused_{status}")
            answer = client.post("/api/jobs", content=body)
            assert (answer.status_code, detail in answer.json()["detail"]) == (status, True), (name, answer.text)
            assert refused(f"refused_{status}") == before + 1, name
        bad_id = client.post("/api/jobs", params={"uploader": "no spaces"}, content=wav)
        assert bad_id.status_code == 422 and "agent id" in bad_id.json()["detail"]
        no_kafka = client.post("/api/jobs", content=wav)
        assert no_kafka.status_code == 503 and "Kafka" in no_kafka.json()["detail"]
        assert client.get("/api/jobs").json() == [] and client.get("/api/jobs/nothing").status_code == 404
    with TestClient(app, headers=viewer) as client:
        assert client.post("/api/jobs", content=wav).status_code == 403
        assert client.get("/api/jobs").status_code == 200  # viewers see jobs, they do not upload
    with TestClient(app) as client:
        assert client.post("/api/jobs", content=wav).status_code == 401
        assert client.get("/api/jobs").status_code == 401
    store.close()
