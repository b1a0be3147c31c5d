"""Motion gating on the device: regions that moved, masks, keyframes and the privacy mute.

Synthetic videos are written with OpenCV's VideoWriter and read back by the agent's own reader
(not in real time: the reader's timestamps are the clock), frames go through the real outbox, and
every committed frame is decoded as ``contracts.Frame`` (which checks the regions' contract).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts import Frame, Image, Region, bounds, decode
from edge_agent.outbox import Outbox
from edge_agent.settings import FrameSettings

cv2 = pytest.importorskip("cv2", reason="camera frames need the camera extra (opencv-python-headless)")

from edge_agent.frames import FrameCapture, MotionDetector, VideoReader, to_regions  # noqa: E402

VIDEO_FPS = 10.0
SIZE = (640, 480)
SIDE = 60  # the moving square's side in pixels
MOVE = (2.0, 5.0)  # video seconds in which the square crosses the scene, then it stops and stays
Y = 200


def background() -> np.ndarray:
    """A still, textured scene (gradients, a dark block, a disc that never moves)."""
    w, h = SIZE
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([(xs * 0.15 + 60), (ys * 0.2 + 70), ((xs + ys) * 0.08 + 80)], -1).astype(np.uint8)
    cv2.rectangle(image, (60, 330), (240, 440), (40, 60, 90), -1)
    cv2.circle(image, (500, 380), 40, (90, 160, 60), -1)
    return image


def square_x(t: float) -> int | None:
    """Left edge of the square at video time ``t`` (None before it enters)."""
    start, end = MOVE
    if t < start:
        return None
    return int(20 + min(t - start, end - start) / (end - start) * 520)


def write_video(path: Path, seconds: float, draw: Callable[[np.ndarray, float], None]) -> Path:
    """A VIDEO_FPS MJPG clip of the still scene with light sensor noise, ``draw`` adding the rest."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, SIZE)
    assert writer.isOpened()
    rng = np.random.default_rng(7)
    scene = background()
    for k in range(round(seconds * VIDEO_FPS)):
        frame = np.clip(scene.astype(np.int16) + rng.normal(0, 2, scene.shape), 0, 255).astype(np.uint8)
        draw(frame, k / VIDEO_FPS)
        writer.write(frame)
    writer.release()
    return path


def moving_square(frame: np.ndarray, t: float) -> None:
    x = square_x(t)
    if x is not None:
        cv2.rectangle(frame, (x, Y), (x + SIDE - 1, Y + SIDE - 1), (235, 235, 235), -1)


def blinking_clock(frame: np.ndarray, t: float) -> None:
    """Something in the top-right corner that changes every half second (a clock's digits)."""
    if int(t * 2) % 2:
        cv2.rectangle(frame, (560, 20), (620, 60), (20, 20, 20), -1)


def settings(source: Path, **kw: object) -> FrameSettings:
    values: dict[str, object] = {"enabled": True, "source": str(source), "fps": 5.0, "realtime": False,
                                 "motion": True, "motion_background_s": 1.0, "max_width": 320}
    return FrameSettings(**(values | kw))


class Recording(VideoReader):
    """The agent's video reader, remembering the capture time of every frame it yields."""

    def __init__(self, source: str, fps: float) -> None:
        super().__init__(source, fps, realtime=False)
        self.times: list[float] = []

    def frames(self, stop: threading.Event) -> Iterator[tuple[np.ndarray, float]]:
        for image, at in super().frames(stop):
            self.times.append(at)
            yield image, at


def run(tmp_path: Path, s: FrameSettings, **kw: Any) -> tuple[FrameCapture, list[Frame], float]:
    """Capture the whole input; the committed frames (decoded) and the capture time of video time 0."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    reader = Recording(s.source, s.fps)
    try:
        capture = FrameCapture("cam-1", s, outbox, reader=reader, **kw)
        capture.run(threading.Event())
        sent = [decode(e.payload, Frame) for e in outbox.due(1000, 60.0)]
    finally:
        outbox.close()
    starts = reader.times
    c = capture.counters
    assert c["seen"] == len(starts) == sum(c[k] for k in ("sent", "skipped", "muted", "too_large", "refused_full",
                                                         "failed"))
    assert c["sent"] == len(sent)
    for f in sent:
        assert len(f.regions) <= bounds.MAX_REGIONS
        assert all(r.x + r.width <= f.image.width and r.y + r.height <= f.image.height for r in f.regions)
    return capture, sent, starts[0]


def contains(region: Region, box: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = box
    return region.x <= x0 and region.y <= y0 and region.x + region.width >= x1 and region.y + region.height >= y1


# --- the proof: a still scene, an object moving through it, still again --------------------


@pytest.mark.parametrize("max_width", [None, 320])
def test_frames_are_sent_only_while_something_moves_with_regions_around_it(tmp_path: Path,
                                                                         max_width: int | None) -> None:
    video = write_video(tmp_path / "walk.avi", 9.0, moving_square)
    capture, sent, t0 = run(tmp_path, settings(video, max_width=max_width))
    scale = 1.0 if max_width is None else max_width / SIZE[0]
    times = [round(f.captured_at - t0, 3) for f in sent]

    assert times[0] == 0.0 and sent[0].regions == []  # the first frame is a keyframe: the whole picture
    assert capture.counters["keyframes"] == 1
    moving = [round(t, 1) for t in np.arange(MOVE[0], MOVE[1] + 1e-9, 0.2)]  # it appears at 2.0 s
    assert set(moving) <= set(times), "every frame in which the square moved is sent"
    fade = 2.0  # a stopped square fades into the background in ~ background_s * ln(contrast / delta)
    assert all(MOVE[0] <= t <= MOVE[1] + fade for t in times[1:]), f"frames sent while nothing moved: {times}"
    assert capture.counters["skipped"] >= 10 + 10  # the still start and the still end (after the fade)

    for f, t in zip(sent[1:], times[1:], strict=True):
        assert (f.image.width, f.image.height) == (round(SIZE[0] * scale), round(SIZE[1] * scale))
        assert f.regions, f"a motion frame at {t} s without regions"
        x = square_x(t)
        if t <= MOVE[1] and x is not None:  # where the square is now must be inside one region
            truth = (int(x * scale), int(Y * scale), int(np.ceil((x + SIDE) * scale)), int(np.ceil((Y + SIDE) * scale)))
            assert any(contains(r, truth) for r in f.regions), f"{t} s: {truth} not in {f.regions}"
            area = sum(r.width * r.height for r in f.regions) / (f.image.width * f.image.height)
            assert area < 0.5, f"{t} s: regions cover {area:.0%} of the frame for one small square"


def test_motion_under_a_mask_sends_nothing(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clock.avi", 4.0, blinking_clock)
    unmasked, sent, _ = run(tmp_path / "a", settings(video))
    assert len(sent) > 3 and all(f.regions for f in sent[1:])  # the clock alone is motion without a mask
    masked, sent, _ = run(tmp_path / "b", settings(video, motion_masks=[[0.85, 0.0, 0.15, 0.2]]))
    assert len(sent) == 1 and sent[0].regions == []  # only the first keyframe
    assert masked.counters["skipped"] == masked.counters["seen"] - 1 == 19


def test_keyframes_come_after_keyframe_s_without_a_sent_frame(tmp_path: Path) -> None:
    def flash(frame: np.ndarray, t: float) -> None:  # the square shows for one sampled frame at 3.0 s
        if 3.0 <= t < 3.2:
            cv2.rectangle(frame, (300, 200), (360, 260), (235, 235, 235), -1)

    video = write_video(tmp_path / "still.avi", 8.0, flash)
    capture, sent, t0 = run(tmp_path, settings(video, keyframe_s=2.0, motion_background_s=0.0))
    times = [round(f.captured_at - t0, 3) for f in sent]
    # keyframes at 0 and 2; motion at 3.0 (it appears) and 3.2 (it goes); 2 s later keyframes again
    assert times == [0.0, 2.0, 3.0, 3.2, 5.2, 7.2]
    assert [bool(f.regions) for f in sent] == [False, False, True, True, False, False]
    assert capture.counters["keyframes"] == 4 and capture.counters["skipped"] == 40 - 6

    never, sent, _ = run(tmp_path / "never", settings(video, keyframe_s=None, motion_background_s=0.0))
    assert len(sent) == 2 and never.counters["keyframes"] == 0  # only the motion: no keyframe, not even first


def test_muted_frames_are_dropped_before_anything_looks_at_them(tmp_path: Path) -> None:
    video = write_video(tmp_path / "walk.avi", 9.0, moving_square)
    mute = threading.Event()
    mute.set()
    seen = 0

    def muted() -> bool:  # muted for the first 20 frames (4 s), the square's first 2 s of motion among them
        nonlocal seen
        seen += 1
        if seen > 20:
            mute.clear()
        return mute.is_set()

    capture, sent, t0 = run(tmp_path, settings(video), muted=muted)
    times = [round(f.captured_at - t0, 3) for f in sent]
    assert capture.counters["muted"] == 20 and min(times) == 4.0
    assert sent[0].regions == [] and capture.counters["keyframes"] == 1  # after a mute: a keyframe first
    assert all(f.regions for f in sent[1:])


def test_a_change_of_the_whole_scene_sends_one_whole_frame_and_restarts_the_background(tmp_path: Path) -> None:
    def lights_on(frame: np.ndarray, t: float) -> None:
        if t >= 1.5:
            frame[:] = np.clip(frame.astype(np.int16) + 70, 0, 255).astype(np.uint8)

    video = write_video(tmp_path / "lights.avi", 4.0, lights_on)
    capture, sent, t0 = run(tmp_path, settings(video, motion_background_s=10.0))
    assert [round(f.captured_at - t0, 3) for f in sent] == [0.0, 1.6]  # not 10+ s of fading motion
    assert [f.regions for f in sent] == [[], []] and capture.counters["scene_changes"] == 1


# --- pieces --------------------------------------------------------------------------------


def noisy(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(background().astype(np.int16) + rng.normal(0, 2, (480, 640, 3)), 0, 255).astype(np.uint8)


def test_detector_sees_noise_as_still_and_a_stopped_object_fade() -> None:
    detector = MotionDetector(cv2, threshold=0.002, background_s=1.0)
    first = detector(noisy(0), 0.0)
    assert first.first and not first.moved
    assert not detector(noisy(1), 0.2).moved
    frame = noisy(2)
    cv2.rectangle(frame, (100, 100), (159, 159), (235, 235, 235), -1)
    moved = detector(frame, 0.4)
    assert moved.moved and len(moved.boxes) == 1
    x0, y0, x1, y1 = moved.boxes[0]
    assert x0 * 640 <= 100 and y0 * 480 <= 100 and x1 * 640 >= 160 and y1 * 480 >= 160
    t, still = 0.4, []
    for _ in range(30):  # the object stays: it fades into the background within a few background_s
        t += 0.2
        still.append(detector(frame, t).moved)
    assert still[0] and not any(still[-15:])
    detector.reset()
    assert detector(noisy(3), t + 0.2).first


def test_regions_are_padded_grown_clipped_and_merged() -> None:
    # a 4x4 box near the corner grows to 32 around its centre, shifted inside the image
    [r] = to_regions([(0.0, 0.0, 4 / 320, 4 / 240)], 320, 240, margin=0.1, min_side=32)
    assert (r.x, r.y, r.width, r.height) == (0, 0, 32, 32)
    [r] = to_regions([(0.5, 0.5, 0.6, 0.6)], 320, 240, margin=0.1, min_side=8)
    assert (r.x, r.y, r.width, r.height) == (160 - 8, 120 - 8, 32 + 16, 24 + 16)  # padded by max(10 %, 8 px)
    [r] = to_regions([(0.1, 0.1, 0.3, 0.3), (0.25, 0.25, 0.5, 0.5)], 320, 240, margin=0.0, min_side=1)
    assert (r.x, r.y, r.x + r.width, r.y + r.height) == (32 - 8, 24 - 8, 160 + 8, 120 + 8)  # overlapping: merged
    [r] = to_regions([(0.2, 0.2, 0.3, 0.3)], 20, 10, margin=0.1, min_side=32)
    assert (r.x, r.y, r.width, r.height) == (0, 0, 20, 10)  # an image smaller than min_side: all of it


def test_many_regions_are_capped_and_still_cover_every_box() -> None:
    boxes = [(i / 20, j / 20, i / 20 + 0.005, j / 20 + 0.005) for i in range(20) for j in range(20)]
    regions = to_regions(boxes, 1280, 960, margin=0.1, min_side=16)
    assert 1 <= len(regions) <= bounds.MAX_REGIONS
    for x0, y0, x1, y1 in boxes:
        box = (int(x0 * 1280), int(y0 * 960), int(np.ceil(x1 * 1280)), int(np.ceil(y1 * 960)))
        assert any(contains(r, box) for r in regions)
    Frame(agent_id="cam-1", segment_id="f-1", seq=0, captured_at=1.0,
          image=Image(width=1280, height=960, data=b"\xff\xd8\xff"), regions=regions)  # the contract accepts them


def test_masks_must_be_fractions_inside_the_frame() -> None:
    assert FrameSettings(motion_masks=[[0.8, 0.0, 0.2, 0.1]]).motion_masks == [(0.8, 0.0, 0.2, 0.1)]
    for bad in ([0.8, 0.0, 0.3, 0.1], [0.1, 0.1, 0.0, 0.2], [-0.1, 0.0, 0.2, 0.2], [10, 10, 100, 100]):
        with pytest.raises(ValueError, match="fractions of the frame"):
            FrameSettings(motion_masks=[bad])
