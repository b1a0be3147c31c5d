"""Frames and detections in the store: one result per frame, images in the database or on disk, retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud.store import Store
from contracts import Detection, Detections, Frame, Image, Region, new_segment_id


def frame(agent: str = "cam-1", captured_at: float | None = None, data: bytes = b"\xff\xd8jpeg") -> Frame:
    return Frame(
        agent_id=agent,
        segment_id=new_segment_id(),
        seq=1,
        captured_at=captured_at or time.time(),
        image=Image(width=640, height=480, data=data),
        regions=[Region(x=1, y=2, width=30, height=40)],
    )


def found(f: Frame, *labels: tuple[str, float]) -> Detections:
    boxes = [
        Detection(label=label, class_id=k, score=score, x1=1, y1=2, x2=3, y2=4)
        for k, (label, score) in enumerate(labels)
    ]
    return Detections(
        agent_id=f.agent_id,
        segment_id=f.segment_id,
        seq=f.seq,
        captured_at=f.captured_at,
        width=640,
        height=480,
        regions=f.regions,
        boxes=boxes,
        model_id="m",
        worker="w",
        detected_at=time.time(),
    )


@pytest.mark.parametrize("on_disk", [False, True])
def test_one_result_per_frame_and_its_image(tmp_path: Path, on_disk: bool) -> None:
    store = Store("sqlite://")
    images = tmp_path / "images" if on_disk else None
    f = frame()
    assert store.store_detections(f, found(f, ("cat", 0.6), ("cat", 0.9), ("dog", 0.3)), images)
    assert not store.store_detections(f, found(f, ("person", 0.99)), images)  # the first result stands
    [row] = store.list_frames()
    assert [b.label for b in row.boxes] == ["cat", "cat", "dog"] and row.regions == f.regions
    assert store.frame_image((f.agent_id, f.segment_id)) == f.image.data
    assert (images / f.agent_id / f"{f.segment_id}.jpg").is_file() if images else True
    assert store.get_frame((f.agent_id, f.segment_id)) == row
    assert store.get_frame((f.agent_id, "nope")) is None and store.frame_image((f.agent_id, "nope")) is None


def test_frames_by_device_class_score_and_time() -> None:
    store = Store("sqlite://")
    now = time.time()
    a = frame("cam-a", now - 30)
    b = frame("cam-b", now - 20)
    c = frame("cam-a", now - 10)
    store.store_detections(a, found(a, ("cat", 0.4)))
    store.store_detections(b, found(b, ("cat", 0.8), ("person", 0.5)))
    store.store_detections(c, found(c))
    ids = lambda rows: [r.frame_id for r in rows]  # noqa: E731
    assert ids(store.list_frames()) == [c.segment_id, b.segment_id, a.segment_id]  # newest first
    assert ids(store.list_frames(agent_id="cam-a")) == [c.segment_id, a.segment_id]
    assert ids(store.list_frames(label="cat")) == [b.segment_id, a.segment_id]
    assert ids(store.list_frames(label="cat", min_score=0.5)) == [b.segment_id]
    assert ids(store.list_frames(since=now - 25, until=now - 5)) == [c.segment_id, b.segment_id]
    assert ids(store.list_frames(limit=1)) == [c.segment_id]


def test_retention_deletes_old_rows_and_their_files(tmp_path: Path) -> None:
    store = Store("sqlite://")
    now = time.time()
    old, new = frame(captured_at=now - 100), frame(captured_at=now - 1)
    for f in (old, new):
        store.store_detections(f, found(f, ("cat", 0.5)), tmp_path)
    assert store.purge_frames(now - 50) == 1
    assert [r.frame_id for r in store.list_frames()] == [new.segment_id]
    assert store.list_frames(label="cat") == store.list_frames()
    assert not (tmp_path / old.agent_id / f"{old.segment_id}.jpg").exists()
    assert (tmp_path / new.agent_id / f"{new.segment_id}.jpg").exists()
    assert store.purge_frames(now - 50) == 0


def test_an_image_whose_file_is_gone_is_none_not_an_error(tmp_path: Path) -> None:
    store = Store("sqlite://")
    f = frame()
    store.store_detections(f, found(f), tmp_path)
    (tmp_path / f.agent_id / f"{f.segment_id}.jpg").unlink()
    assert store.frame_image((f.agent_id, f.segment_id)) is None
    assert store.get_frame((f.agent_id, f.segment_id)) is not None
