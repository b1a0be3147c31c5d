"""Frames into the outbox: read → (mute) → motion → JPEG → ``contracts.Frame`` on the frames topic.

Like frigate, motion comes first: a frame is sent only when something moved in it, with the
regions that moved (in the sent image's pixels) so the cloud detects there; a keyframe (the whole
frame, ``regions=[]``) goes when nothing was sent for ``keyframe_s``, and the first frame is one.
While the device is muted (privacy), frames are read and dropped before anything looks at them.
Frames go through the same durable outbox as speech segments, so they are delivered the same way:
committed before they are published, deleted only on the bridge's receipt.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from contracts import Frame, Image, Region, Up, encode, mqtt_topic, new_segment_id
from edge_agent.frames.motion import MotionDetector
from edge_agent.frames.regions import to_regions
from edge_agent.frames.sources import FrameReader, load_cv2, open_reader
from edge_agent.outbox import Outbox
from edge_agent.quota import OutboxFull
from edge_agent.settings import FrameSettings

log = logging.getLogger(__name__)

MAX_JPEG_BYTES = 3 * 1024 * 1024  # base64 makes it 4 MiB on the wire, the default message limit


def sent_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """The size a ``width`` x ``height`` frame is sent at: scaled down to ``max_width`` if wider."""
    if max_width is not None and width > max_width:
        return max_width, max(1, round(height * max_width / width))
    return width, height


def encode_jpeg(cv2: Any, image: np.ndarray, *, quality: int, max_width: int | None) -> tuple[bytes, int, int]:
    """``(jpeg bytes, width, height)`` of ``image``, scaled down to ``max_width`` if it is wider."""
    height, width = image.shape[:2]
    size = sent_size(width, height, max_width)
    if size != (width, height):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return buffer.tobytes(), size[0], size[1]


class FrameCapture:
    """Takes frames at the configured rate and commits each one worth sending to the outbox.

    ``counters``: ``seen`` (every frame read), ``sent`` (committed; ``keyframes`` of them whole
    frames sent without motion, ``scene_changes`` whole frames sent because most of the picture
    changed at once), ``skipped`` (no motion), ``muted`` (dropped while muted),
    ``too_large``, ``refused_full`` (the outbox quota refused it), ``failed``; ``seen`` is the sum of
    ``sent`` and the others. The reader's own counters (``unreadable``, ``camera_lost``,
    ``reconnects`` …) are in ``reader.counters``.
    """

    def __init__(
        self,
        agent_id: str,
        settings: FrameSettings,
        outbox: Outbox,
        *,
        on_commit: Callable[[], object] = lambda: None,
        reader: FrameReader | None = None,
        muted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.on_commit = on_commit
        self.muted = muted
        self.cv2 = load_cv2()
        self.reader = reader or open_reader(settings.source, settings.fps, realtime=settings.realtime)
        s = settings
        self.detector = (
            MotionDetector(
                self.cv2,
                threshold=s.motion_threshold,
                pixel_delta=s.motion_pixel_delta,
                min_area=s.motion_min_area,
                background_s=s.motion_background_s,
                masks=s.motion_masks,
            )
            if s.motion
            else None
        )
        self.counters: Counter[str] = Counter()
        self.topic = mqtt_topic(agent_id, Up.FRAMES)
        self._last_sent: float | None = None  # capture time of the last frame sent
        self._was_muted = False

    def run(self, stop: threading.Event) -> None:
        """Take frames until the input ends or ``stop`` is set (the agent runs this in its own thread)."""
        for image, captured_at in self.reader.frames(stop):
            self.counters["seen"] += 1
            if self.muted():
                self.counters["muted"] += 1
                if not self._was_muted:
                    log.info("frames muted: dropped until unmuted")
                self._was_muted = True
                continue
            if self._was_muted:  # the background is stale: start over, with a keyframe
                self._was_muted = False
                self._last_sent = None
                if self.detector is not None:
                    self.detector.reset()
                log.info("frames unmuted")
            try:
                self._take(image, captured_at)
            except Exception:  # one bad frame must not stop frame capture
                self.counters["failed"] += 1
                log.exception("a frame could not be kept")
        log.info("frames finished: %s, reader %s", dict(self.counters), dict(self.reader.counters))

    def _take(self, image: np.ndarray, captured_at: float) -> None:
        s = self.settings
        width, height = sent_size(image.shape[1], image.shape[0], s.max_width)
        regions: list[Region] = []
        if self.detector is not None:
            motion = self.detector(image, captured_at)
            if motion.scene_change:  # regions=[]: the whole frame
                self.counters["scene_changes"] += 1
                log.info("the whole scene changed (%.0f%% of it): sending the whole frame", 100 * motion.fraction)
            elif motion.moved:
                regions = to_regions(motion.boxes, width, height, margin=s.region_margin, min_side=s.region_min_px)
            elif self._keyframe_due(captured_at):
                self.counters["keyframes"] += 1
                log.debug("keyframe at %.3f", captured_at)
            else:
                self.counters["skipped"] += 1
                log.debug("frame skipped: %.4f of pixels changed", motion.fraction)
                return
        jpeg, width, height = encode_jpeg(self.cv2, image, quality=s.jpeg_quality, max_width=s.max_width)
        if len(jpeg) > MAX_JPEG_BYTES:
            self.counters["too_large"] += 1
            log.warning("frame skipped: %d JPEG bytes exceed %d (lower jpeg_quality or max_width)",
                        len(jpeg), MAX_JPEG_BYTES)
            return
        try:
            self.commit(jpeg, width, height, captured_at, regions=regions)
        except OutboxFull as exc:
            self.counters["refused_full"] += 1
            log.warning("frame not kept: %s", exc)
            return
        self.counters["sent"] += 1
        self._last_sent = captured_at

    def _keyframe_due(self, captured_at: float) -> bool:
        """A whole frame is due: the first one, or none sent for ``keyframe_s`` (never when unset)."""
        every = self.settings.keyframe_s
        if every is None:
            return False
        return self._last_sent is None or captured_at - self._last_sent >= every - 1e-6

    def commit(
        self, jpeg: bytes, width: int, height: int, captured_at: float, *, regions: Sequence[Region] = ()
    ) -> tuple[int, str]:
        """Append one JPEG frame (and where it moved; empty: the whole frame) to the outbox;
        returns ``(seq, segment_id)``."""
        segment_id = new_segment_id()
        image = Image(width=width, height=height, data=jpeg)
        # validated here, before the outbox holds it
        frame = Frame(agent_id=self.agent_id, segment_id=segment_id, seq=0, captured_at=captured_at, image=image,
                      regions=list(regions), summary=self.settings.summary)  # fmt: skip

        def build(seq: int) -> bytes:
            return encode(frame.model_copy(update={"seq": seq}))

        seq = self.outbox.append(segment_id, self.topic, build)
        self.on_commit()
        return seq, segment_id
