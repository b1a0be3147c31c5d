"""Camera frames: readers, the motion trigger, JPEG, the outbox, and the bridge into Kafka."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import bridge_settings, read_keyed, unique, wait_until

from contracts import DeadLetter, Down, Frame, Image, Kafka, Reason, Up, decode, encode, mqtt_topic
from devtools.brokers import Mosquitto, Tansu
from edge_agent.outbox import Outbox
from edge_agent.settings import FrameSettings

cv2 = pytest.importorskip("cv2", reason="camera frames need the camera extra (opencv-python-headless)")

from bridge.validation import Refused, check_frame, topic_route  # noqa: E402
from edge_agent.frames import FolderReader, FrameCapture, VideoReader, encode_jpeg  # noqa: E402

# positions of a moving square: frames 1, 2 and 4 repeat the one before (no motion)
POSITIONS = [(40, 40), (40, 40), (40, 40), (150, 90), (150, 90), (230, 140)]


def scene(x: int, y: int, seed: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A grey background with a little sensor noise and a coloured square at ``(x, y)``."""
    w, h = size
    rng = np.random.default_rng(seed)
    image = np.clip(110 + rng.integers(-3, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.rectangle(image, (x, y), (x + 60, y + 60), (30, 200, 240), -1)
    cv2.circle(image, (w - 40, 40), 20, (200, 60, 60), -1)  # something that never moves
    return image


def make_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, (x, y) in enumerate(POSITIONS):
        cv2.imwrite(str(folder / f"frame-{k:03d}.png"), scene(x, y, seed=k))
    return folder


def settings(source: Path, **kw: object) -> FrameSettings:
    values: dict[str, object] = {"enabled": True, "source": str(source), "fps": 5.0, "realtime": False,
                                 "motion": True, "motion_background_s": 0.0, "jpeg_quality": 85, "max_width": 160}
    return FrameSettings(**(values | kw))


# --- pieces --------------------------------------------------------------------------------


def test_encode_jpeg_scales_down_and_keeps_aspect() -> None:
    jpeg, w, h = encode_jpeg(cv2, scene(40, 40, 0, size=(640, 480)), quality=70, max_width=200)
    assert (w, h) == (200, 150) and jpeg[:3] == b"\xff\xd8\xff"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (150, 200, 3)
    small, w2, h2 = encode_jpeg(cv2, scene(40, 40, 0), quality=70, max_width=None)
    assert (w2, h2) == (320, 240)
    assert len(encode_jpeg(cv2, scene(40, 40, 0), quality=10, max_width=None)[0]) < len(small)


def test_folder_reader_paces_frames_and_skips_unreadable_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs")
    (folder / "frame-002b.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    reader = FolderReader(folder, fps=4.0, realtime=False)
    frames = list(reader.frames(threading.Event()))
    assert len(frames) == len(POSITIONS) and reader.counters["unreadable"] == 1
    times = [t for _, t in frames]
    assert times[1] - times[0] == pytest.approx(0.25)
    assert times[-1] - times[0] == pytest.approx(1.5)  # 7 files, 1 unreadable: its time slot still passes
    started = time.monotonic()
    paced = list(FolderReader(folder, fps=20.0, realtime=True).frames(threading.Event()))
    assert len(paced) == 6 and time.monotonic() - started >= 0.29  # the 7th slot comes 0.3 s in at 20 fps
    stop = threading.Event()
    stop.set()
    assert list(FolderReader(folder, fps=1.0).frames(stop)) == []


def test_video_reader_samples_at_the_configured_rate(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened()
    for k in range(20):  # 2 s at 10 fps
        writer.write(scene(10 + 10 * k, 40, seed=k))
    writer.release()
    frames = list(VideoReader(str(path), fps=2.0, realtime=False).frames(threading.Event()))
    times = np.array([t for _, t in frames])
    assert len(frames) == 4 and np.allclose(np.diff(times), 0.5)
    assert frames[0][0].shape == (240, 320, 3)


def test_frame_capture_commits_only_frames_with_motion(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    commits: list[int] = []
    capture = FrameCapture("cam-1", settings(make_folder(tmp_path / "imgs")), outbox,
                           on_commit=lambda: commits.append(1))
    capture.run(threading.Event())
    # frame 0 is the first keyframe; 3 and 5 moved against the frame before them
    assert dict(capture.counters) == {"seen": 6, "sent": 3, "keyframes": 1, "skipped": 3}
    entries = outbox.due(10, 60.0)
    assert len(entries) == len(commits) == 3
    assert {e.topic for e in entries} == {mqtt_topic("cam-1", Up.FRAMES)}
    frames = [decode(e.payload, Frame) for e in entries]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert all((f.image.width, f.image.height) == (160, 120) for f in frames)
    times = [f.captured_at for f in frames]
    assert times[1] - times[0] == pytest.approx(3 / 5.0)  # frames 0, 3 and 5 at 5 fps
    outbox.close()


def test_bridge_validation_of_frames() -> None:
    jpeg, w, h = encode_jpeg(cv2, scene(40, 40, 0), quality=80, max_width=None)
    good = Frame(agent_id="cam-1", segment_id="f-1", seq=0, captured_at=1.0,
                 image=Image(width=w, height=h, data=jpeg))
    limits = {"max_bytes": 4 << 20, "max_side": 4096, "max_image_bytes": 1 << 20}
    assert check_frame(encode(good), "cam-1", **limits) == good
    assert topic_route(mqtt_topic("cam-1", Up.FRAMES)) == ("cam-1", Up.FRAMES)

    def refused(raw: bytes, agent: str = "cam-1", **over: int) -> Refused:
        with pytest.raises(Refused) as info:
            check_frame(raw, agent, **(limits | over))
        return info.value

    png = cv2.imencode(".png", scene(0, 0, 0))[1].tobytes()
    assert "not JPEG" in refused(encode(good.model_copy(update={"image": good.image.model_copy(
        update={"data": png})}))).detail
    assert refused(encode(good), "cam-2").reason is Reason.SPOOFED_AGENT
    assert refused(encode(good), max_side=200).detail.endswith("exceeds 200 pixels a side")
    assert refused(encode(good), max_image_bytes=1024).reason is Reason.TOO_LARGE
    assert refused(b"{not json").reason is Reason.BAD_JSON
    assert topic_route(mqtt_topic("cam-1", Up.STATUS)) == ("cam-1", Up.STATUS)  # statuses go up too
    with pytest.raises(Refused, match="unexpected channel"):
        topic_route(mqtt_topic("cam-1", Down.CAPTIONS))


# --- through the real brokers --------------------------------------------------------------


@pytest.mark.integration
def test_frames_reach_kafka_through_outbox_link_and_bridge(tmp_path: Path, mosquitto: Mosquitto, kafka: Tansu) -> None:
    from bridge.app import Bridge
    from edge_agent.link import MqttLink
    from runtime.settings import MqttSettings

    agent_id = unique("cam")
    bridge = Bridge(bridge_settings(mosquitto, kafka.bootstrap))
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink(agent_id, MqttSettings(port=mosquitto.port, session_expiry_s=30), outbox,
                    on_final=lambda _f: None, resend_after_s=5.0)
    try:
        bridge.start()
        assert bridge.wait_ready(10)
        link.start()
        capture = FrameCapture(agent_id, settings(make_folder(tmp_path / "imgs")), outbox, on_commit=link.notify)
        capture.run(threading.Event())
        _, bad_id = capture.commit(b"GIF89a not a jpeg", 8, 8, time.time())  # refused by the bridge
        assert capture.counters["sent"] == 3 and capture.counters["skipped"] == 3

        wait_until(lambda: outbox.depth() == 0, 20, "receipts for every frame (the outbox drained)")
        assert link.counters["receipted"] == 3 and link.counters["rejected"] == 1

        frames = [decode(v, Frame) for v in read_keyed(kafka.bootstrap, Kafka.FRAMES, agent_id, 3)]
        assert [f.seq for f in frames] == [0, 1, 2] and all(f.agent_id == agent_id for f in frames)
        for f in frames:
            image = cv2.imdecode(np.frombuffer(f.image.data, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (f.image.height, f.image.width, 3) == (120, 160, 3)
        letters = [decode(v, DeadLetter) for v in read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent_id, 1)]
        assert len(letters) == 1 and letters[0].reason == Reason.INVALID.value and "not JPEG" in letters[0].detail
        assert bad_id.encode() in letters[0].payload
        assert bridge.stats()["produced"].get(Kafka.FRAMES.value) == 3
    finally:
        link.stop()
        bridge.stop()
        outbox.close()
