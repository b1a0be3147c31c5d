"""The detection worker against a real Kafka-protocol broker, the real YOLOv3-tiny and real photographs.

Frames go straight into ``edgecap.frames`` (as the bridge writes them): the photographs (whole, and
one inside a large frame with the region where it lies), and bad input of every kind. Each good
frame gets exactly one result, in the store and on ``edgecap.detections``; each bad one a dead
letter with its reason; the worker goes on.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from photos import MIN_IOU, PHOTOS, expected_box, iou, load
from support import read_keyed, read_topic, unique, wait_until

from cloud.detect.worker import DetectWorker
from cloud.settings import DetectSettings, WorkerSettings
from cloud.store import Store
from contracts import DeadLetter, Detections, Frame, Image, Kafka, Region, decode, encode, new_segment_id
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.models]
pytest.importorskip("skimage")


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(data.tobytes())


def frame(agent: str, seq: int, data: bytes, width: int, height: int, regions: list[Region] | None = None,
          summary: bool = False) -> Frame:  # fmt: skip
    image = Image(width=width, height=height, data=data)
    return Frame(agent_id=agent, segment_id=new_segment_id(), seq=seq, captured_at=time.time(), image=image,
                 regions=regions or [], summary=summary)  # fmt: skip


def produce(bootstrap: str, values: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in values:
        producer.produce(Kafka.FRAMES, key=key, value=value)
    assert producer.flush(10) == 0


@pytest.fixture
def worker(kafka: Tansu, models_dir: Path, tmp_path: Path) -> Iterator[DetectWorker]:
    if not (models_dir / "yolov3-tiny" / "onnx" / "model.json").is_file():
        pytest.skip("no detector prepared: edgecap models prepare --detector yolov3-tiny")
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap),
        group=unique("detect"),
        session_timeout_ms=3000,
        topic_partitions=2,
        worker_name="detect-test",
        detect=DetectSettings(
            model_dir=models_dir / "yolov3-tiny",
            threads=2,
            batch_size=8,
            max_wait_ms=300,
            max_pixels=4_000_000,
            images_dir=tmp_path / "images",
        ),  # fmt: skip
    )
    running = DetectWorker(settings, store=Store(f"sqlite:///{tmp_path / 'store.db'}"))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def test_photographs_become_boxes_in_the_store_and_on_kafka(kafka: Tansu, worker: DetectWorker) -> None:
    agent = unique("cam")
    frames = []
    for seq, name in enumerate(sorted(PHOTOS)):
        pixels = load(name)
        frames.append(frame(agent, seq, jpeg(pixels), pixels.shape[1], pixels.shape[0]))
    # the cup in a large, empty frame, with the region where the device saw it move
    cup = load("coffee.png")
    big = np.full((1080, 1920, 3), 70, np.uint8)
    big[400 : 400 + cup.shape[0], 1000 : 1000 + cup.shape[1]] = cup
    region = Region(x=980, y=380, width=cup.shape[1] + 40, height=cup.shape[0] + 40)
    frames.append(frame(agent, len(frames), jpeg(big), 1920, 1080, [region, Region(x=0, y=0, width=200, height=200)]))
    produce(kafka.bootstrap, [(agent, encode(f)) for f in frames])

    results = [decode(v, Detections) for v in read_keyed(kafka.bootstrap, Kafka.DETECTIONS, agent, len(frames), 60)]
    by_id = {r.segment_id: r for r in results}
    assert len(results) == len(by_id) == len(frames)
    for f, name in zip(frames, sorted(PHOTOS), strict=False):
        found = by_id[f.segment_id]
        label = PHOTOS[name][0]
        mine = [b for b in found.boxes if b.label == label]
        assert mine, (name, found.boxes)
        best = max(iou((b.x1, b.y1, b.x2, b.y2), expected_box(name, f.image.width, f.image.height)) for b in mine)
        assert best >= MIN_IOU, (name, mine)
        assert found.model_id == worker.detector.model_id and found.worker == "detect-test"
    in_big = by_id[frames[-1].segment_id]
    cups = [b for b in in_big.boxes if b.label == "cup"]
    assert cups and in_big.regions == frames[-1].regions
    assert (
        iou(
            (cups[0].x1, cups[0].y1, cups[0].x2, cups[0].y2),
            (1000 + 0.27 * 600, 400, 1000 + 0.72 * 600, 400 + 0.78 * 400),
        )
        >= MIN_IOU
    )

    wait_until(lambda: len(worker.store.list_frames(agent_id=agent)) == len(frames), 20, "every frame stored")
    rows = {r.frame_id: r for r in worker.store.list_frames(agent_id=agent)}
    for f in frames:
        assert rows[f.segment_id].boxes == by_id[f.segment_id].boxes
        assert worker.store.frame_image((agent, f.segment_id)) == f.image.data
    cats = worker.store.list_frames(label="cat", agent_id=agent)
    assert [r.frame_id for r in cats] == [frames[sorted(PHOTOS).index("chelsea.png")].segment_id]
    assert worker.store.list_frames(label="cat", agent_id=agent, min_score=0.99) == []

    # the same frames again (a redone batch, a device that resends): one result each, the first
    produce(kafka.bootstrap, [(agent, encode(f)) for f in frames[:2]])
    wait_until(lambda: worker.tally["duplicate"] >= 2, 60, "the two frames sent again")
    assert len(worker.store.list_frames(agent_id=agent)) == len(frames)


def test_bad_frames_are_dead_lettered_with_their_reason_and_the_rest_flows(kafka: Tansu, worker: DetectWorker) -> None:
    from PIL import Image as Pil

    agent = unique("cam-bad")
    cat = load("chelsea.png")
    good = jpeg(cat)
    png = io.BytesIO()
    Pil.fromarray(cat[:, :, ::-1]).save(png, "PNG")
    huge = io.BytesIO()
    Pil.new("RGB", (3000, 2000)).save(huge, "JPEG", quality=10)  # 6 M pixels (max_pixels 4 M here) in kB
    h, w = cat.shape[:2]
    bad = {
        "truncated": frame(agent, 0, good[: len(good) // 2], w, h),
        "png": frame(agent, 1, png.getvalue(), w, h),
        "bytes": frame(agent, 2, b"\x00not an image at all" * 10, w, h),
        "huge": frame(agent, 3, huge.getvalue(), 3000, 2000),
        "mislabelled": frame(agent, 4, good, w + 1, h),
    }
    empty_region = json.loads(encode(frame(agent, 5, good, w, h, [Region(x=0, y=0, width=10, height=10)])))
    empty_region["regions"][0]["width"] = 0
    last = frame(agent, 6, good, w, h, summary=True)  # the device asks for the result back
    produce(kafka.bootstrap, [(agent, encode(f)) for f in bad.values()]
            + [(agent, json.dumps(empty_region).encode()), (agent, encode(last))])  # fmt: skip

    [result] = [decode(v, Detections) for v in read_keyed(kafka.bootstrap, Kafka.DETECTIONS, agent, 1, 60)]
    assert result.segment_id == last.segment_id and any(b.label == "cat" for b in result.boxes)
    assert result.summary  # so the bridge sends it down
    letters = [
        decode(v, DeadLetter)
        for _, v in read_topic(
            kafka.bootstrap,
            Kafka.DEADLETTER,
            lambda r: len([x for x in r if x[0] == agent.encode()]) >= 6,
            timeout_s=30,
        )
    ]
    mine = [d for d in letters if d.agent_id == agent]
    reasons = sorted(d.reason.value for d in mine)
    assert reasons == sorted(["bad_image", "bad_image", "bad_image", "too_large", "bad_image", "invalid"]), mine
    details = " | ".join(d.detail for d in mine)
    assert "truncated" in details and "PNG image, not a JPEG" in details and "declared" in details
    assert "regions.0.width" in details
    assert worker.tally.dead_letters["bad_image"] >= 4 and worker.tally.dead_letters["too_large"] >= 1
    assert len(worker.store.list_frames(agent_id=agent)) == 1
