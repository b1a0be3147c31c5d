"""Frames into the outbox: read → motion trigger → JPEG → ``contracts.Frame`` on the frames topic.

Frames go through the same durable outbox as speech segments, so they are delivered the same way:
committed before they are published, deleted only on the bridge's receipt.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from contracts import Frame, Image, Up, encode, mqtt_topic, new_segment_id
from edge_agent.frames.motion import MotionTrigger
from edge_agent.frames.sources import FrameReader, load_cv2, open_reader
from edge_agent.outbox import Outbox
from edge_agent.quota import OutboxFull
from edge_agent.settings import FrameSettings

log = logging.getLogger(__name__)

MAX_JPEG_BYTES = 3 * 1024 * 1024  # base64 makes it 4 MiB on the wire, the default message limit


def encode_jpeg(cv2: Any, image: np.ndarray, *, quality: int, max_width: int | None) -> tuple[bytes, int, int]:
    """``(jpeg bytes, width, height)`` of ``image``, scaled down to ``max_width`` if it is wider."""
    height, width = image.shape[:2]
    if max_width is not None and width > max_width:
        height = max(1, round(height * max_width / width))
        width = max_width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return buffer.tobytes(), width, height


class FrameCapture:
    """Takes frames at the configured rate and commits each kept one to the outbox.

    ``counters``: ``read``, ``kept``, ``no_motion`` (skipped by the trigger), ``too_large``,
    ``refused_full`` (the outbox quota refused it), ``failed``; the reader's own counters
    (``unreadable``, ``camera_lost``, ``reconnects`` …) are in ``reader.counters``.
    """

    def __init__(
        self,
        agent_id: str,
        settings: FrameSettings,
        outbox: Outbox,
        *,
        on_commit: Callable[[], object] = lambda: None,
        reader: FrameReader | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.on_commit = on_commit
        self.cv2 = load_cv2()
        self.reader = reader or open_reader(settings.source, settings.fps, realtime=settings.realtime)
        self.trigger = (
            MotionTrigger(self.cv2, settings.motion_threshold, pixel_delta=settings.motion_pixel_delta)
            if settings.motion
            else None
        )
        self.counters: Counter[str] = Counter()
        self.topic = mqtt_topic(agent_id, Up.FRAMES)

    def run(self, stop: threading.Event) -> None:
        """Take frames until the input ends or ``stop`` is set (the agent runs this in its own thread)."""
        for image, captured_at in self.reader.frames(stop):
            self.counters["read"] += 1
            try:
                self._take(image, captured_at)
            except Exception:  # one bad frame must not stop frame capture
                self.counters["failed"] += 1
                log.exception("a frame could not be kept")
        log.info("frames finished: %s, reader %s", dict(self.counters), dict(self.reader.counters))

    def _take(self, image: np.ndarray, captured_at: float) -> None:
        if self.trigger is not None and not self.trigger(image):
            self.counters["no_motion"] += 1
            log.debug("frame skipped: %.4f of pixels changed", self.trigger.last_fraction or 0.0)
            return
        s = self.settings
        jpeg, width, height = encode_jpeg(self.cv2, image, quality=s.jpeg_quality, max_width=s.max_width)
        if len(jpeg) > MAX_JPEG_BYTES:
            self.counters["too_large"] += 1
            log.warning("frame skipped: %d JPEG bytes exceed %d (lower jpeg_quality or max_width)",
                        len(jpeg), MAX_JPEG_BYTES)
            return
        try:
            self.commit(jpeg, width, height, captured_at)
        except OutboxFull as exc:
            self.counters["refused_full"] += 1
            log.warning("frame not kept: %s", exc)
            return
        self.counters["kept"] += 1

    def commit(self, jpeg: bytes, width: int, height: int, captured_at: float) -> tuple[int, str]:
        """Append one JPEG frame to the outbox; returns ``(seq, segment_id)``."""
        segment_id = new_segment_id()
        image = Image(width=width, height=height, data=jpeg)

        def build(seq: int) -> bytes:
            return encode(
                Frame(agent_id=self.agent_id, segment_id=segment_id, seq=seq, captured_at=captured_at, image=image)
            )

        seq = self.outbox.append(segment_id, self.topic, build)
        self.on_commit()
        return seq, segment_id
