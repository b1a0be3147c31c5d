"""Uploads through the frames' pipeline: the dashboard's route → Kafka → the detection worker → store → route."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from photos import load
from support import dashboard_user, unique, wait_until

from cloud.dashboard.app import create_app
from cloud.detect.worker import DetectWorker
from cloud.settings import DashboardSettings, DetectSettings, WorkerSettings
from cloud.store import Store
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

pytest.importorskip("skimage")


def png(name: str) -> bytes:
    from PIL import Image as Pil

    out = io.BytesIO()
    Pil.fromarray(load(name)[:, :, ::-1]).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


@pytest.mark.integration
@pytest.mark.models
def test_an_uploaded_image_gets_its_boxes(kafka: Tansu, models_dir: Path, store: Store) -> None:
    if not (models_dir / "yolov3-tiny" / "onnx" / "model.json").is_file():
        pytest.skip("no detector prepared: edgecap models prepare --detector yolov3-tiny")
    bus = KafkaSettings(bootstrap_servers=kafka.bootstrap)
    settings = WorkerSettings(kafka=bus, group=unique("detect"), session_timeout_ms=3000, topic_partitions=2,
                              detect=DetectSettings(model_dir=models_dir / "yolov3-tiny", threads=2))  # fmt: skip
    worker = DetectWorker(settings, store=store)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        app = create_app(DashboardSettings(store_url="sqlite://", kafka=bus), store)
        _, admin = dashboard_user(store, "admin")
        with TestClient(app, headers=admin) as client:  # its lifespan closes the uploads' producer
            upload(client)
    finally:
        stop.set()
        thread.join(30)


def upload(client: TestClient) -> None:
    """Upload a photograph of a cat; its boxes come back at the returned URL."""
    uploader = unique("alice")
    answer = client.post("/api/frames", params={"uploader": uploader}, content=png("chelsea.png"))
    assert answer.status_code == 202, answer.text
    url = answer.json()["url"]
    assert url == f"/api/frames/{uploader}/{answer.json()['frame_id']}"
    wait_until(lambda: client.get(url).status_code == 200, 60, "the upload's detections")
    frame = client.get(url).json()
    assert any(b["label"] == "cat" for b in frame["boxes"]) and (frame["width"], frame["height"]) == (451, 300)
    image = client.get(frame["image_url"])
    assert image.headers["content-type"] == "image/jpeg"  # the PNG went as a JPEG, the contract's codec
    assert [f["frame_id"] for f in client.get("/api/frames", params={"agent_id": uploader}).json()] == [
        answer.json()["frame_id"]
    ]


def test_uploads_that_cannot_be_taken_are_refused_with_their_reason(store: Store) -> None:
    from PIL import Image as Pil

    no_kafka_settings = DashboardSettings(store_url="sqlite://", max_upload_bytes=200_000)
    _, admin = dashboard_user(store, "admin")
    client = TestClient(create_app(no_kafka_settings, store), headers=admin)
    gif = io.BytesIO()
    Pil.new("RGB", (10, 10)).save(gif, "GIF")
    cases = {
        "gif": (gif.getvalue(), 415, "only JPEG and PNG"),
        "noise": (b"\x00" * 100, 415, "not an image"),
        "large": (b"\xff" * 200_001, 413, "over 200000 bytes"),
        "truncated": (png("chelsea.png")[:50_000], 422, "does not decode"),
    }
    for name, (body, status, detail) in cases.items():
        answer = client.post("/api/frames", content=body)
        assert (answer.status_code, detail in answer.json()["detail"]) == (status, True), (name, answer.text)
    small = io.BytesIO()
    Pil.new("RGB", (64, 48), "red").save(small, "JPEG")
    no_kafka = client.post("/api/frames", params={"uploader": "bob"}, content=small.getvalue())
    assert no_kafka.status_code == 503 and "kafka" in no_kafka.json()["detail"]
    bad_id = client.post("/api/frames", params={"uploader": "no spaces"}, content=small.getvalue())
    assert bad_id.status_code == 422
    assert client.get("/api/frames/bob/nothing").status_code == 404
    assert client.get("/api/frames/bob/nothing/image").status_code == 404
