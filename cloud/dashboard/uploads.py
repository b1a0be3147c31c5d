"""Images uploaded over the API go the way a camera's frames go: to ``edgecap.frames``, as a ``Frame``.

The uploader is the frame's agent (an id of the device-id form, ``upload`` by default), so the
detector, the store and every route treat an upload as any frame. Only JPEG and PNG are taken (PNG
re-encoded as JPEG, the one image codec of the contract), at most ``max_upload_bytes`` and
:data:`~contracts.bounds.MAX_IMAGE_SIDE` pixels a side, read in full (a truncated file is refused
here, with its reason, not by the detector). The record is produced with ``acks=all`` and the
upload answered only once Kafka confirmed it.
"""

from __future__ import annotations

import io
import logging
import threading
import time

from cloud.settings import DashboardSettings
from contracts import Frame, Image, Kafka, bounds, encode, new_segment_id
from runtime.kafka import Publisher

log = logging.getLogger(__name__)

FORMATS = ("JPEG", "PNG")
JPEG_QUALITY = 90


class UploadRefused(ValueError):
    """An upload that cannot be taken: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Uploads:
    """Turns uploaded images into frames on Kafka (one producer, shared by the requests)."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self._publisher = Publisher(settings.kafka) if settings.kafka is not None else None
        self._lock = threading.Lock()  # deliver() waits for everything sent: one upload at a time
        self.counts = {"accepted": 0, "refused": 0}

    def submit(self, uploader: str, data: bytes) -> Frame:
        """The frame made of ``data``, confirmed by Kafka; :class:`UploadRefused` otherwise."""
        try:
            frame = self._frame(uploader, data)
        except UploadRefused as exc:
            self.counts["refused"] += 1
            log.warning("upload from %s refused: %s", uploader, exc.detail)
            raise
        if self._publisher is None:
            raise UploadRefused(503, "uploads need Kafka: set the dashboard's kafka settings")
        with self._lock:
            self._publisher.send(Kafka.FRAMES, uploader, encode(frame))
            if not self._publisher.deliver(timeout_s=10):
                raise UploadRefused(503, "Kafka did not confirm the upload: try again")
        self.counts["accepted"] += 1
        log.info("upload from %s: frame %s (%dx%d, %d bytes)", uploader, frame.segment_id, frame.image.width,
                 frame.image.height, len(frame.image.data))  # fmt: skip
        return frame

    def _frame(self, uploader: str, data: bytes) -> Frame:
        from PIL import Image as Pil
        from PIL import UnidentifiedImageError

        if len(data) > self.settings.max_upload_bytes:
            raise UploadRefused(413, f"{len(data)} bytes, over {self.settings.max_upload_bytes}")
        try:
            opened = Pil.open(io.BytesIO(data))
        except (UnidentifiedImageError, Pil.DecompressionBombError, OSError, ValueError) as exc:
            raise UploadRefused(415, f"not an image: {type(exc).__name__}") from exc
        with opened:
            width, height = opened.size
            if opened.format not in FORMATS:
                raise UploadRefused(415, f"a {opened.format} image: only {' and '.join(FORMATS)} are taken")
            if max(width, height) > bounds.MAX_IMAGE_SIDE:
                raise UploadRefused(413, f"{width}x{height} pixels, over {bounds.MAX_IMAGE_SIDE} a side")
            try:
                opened.load()
            except (OSError, ValueError) as exc:
                raise UploadRefused(422, f"the image does not decode: {exc}") from exc
            if opened.format != "JPEG":
                out = io.BytesIO()
                opened.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
                data = out.getvalue()
        try:
            return Frame(agent_id=uploader, segment_id=new_segment_id(), seq=time.time_ns() // 1000,
                         captured_at=time.time(), image=Image(width=width, height=height, data=data))  # fmt: skip
        except ValueError as exc:  # an uploader name that is not an id
            raise UploadRefused(422, str(exc).splitlines()[0]) from exc

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None  # the last reference: librdkafka's client goes with it
