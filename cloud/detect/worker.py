"""``edgecap worker detect``: frames from ``edgecap.frames`` → boxes in the store and ``edgecap.detections``.

A :class:`~runtime.kafka.BatchWorker` (consumer group ``edgecap-detect``): a batch of frames, by
size and wait time, is decoded (:mod:`cloud.detect.images`: a frame that is not the JPEG it declares,
or too large, is dead-lettered with its reason), cut into the regions where the device saw motion
(the whole frame when it sent none), detected in batches (:meth:`Detector.detect`: letterbox,
inference, boxes back in the frame's pixels, per-class thresholds), the boxes of a frame's regions
suppressed together (regions overlap), stored (one result per frame: the first,
:meth:`Store.store_detections`) and published as :class:`~contracts.Detections`; the batch's
offsets are stored only after every output is delivered. The poison rules are the transcriber's
(:mod:`cloud.attempts`): a frame in hand when the process died is detected alone after a restart
and dead-lettered after ``max_attempts`` deaths. Between batches, :meth:`tick` deletes frames older
than ``detect.retention_s``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from confluent_kafka import Message
from sqlalchemy.exc import SQLAlchemyError

from cloud.attempts import dead_letter_poison, in_hand, triage
from cloud.detect import yolo
from cloud.detect.base import Crop, Detector
from cloud.detect.images import ImageRefused, decode_jpeg
from cloud.settings import WorkerSettings
from cloud.store import SegmentKey, Store
from contracts import DecodeError, Detection, Detections, Frame, Kafka, decode, encode
from runtime.kafka import BatchWorker, Publisher

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgecap-detect"
PURGE_EVERY_S = 60.0


def _key(frame: Frame) -> SegmentKey:
    return (frame.agent_id, frame.segment_id)


class DetectWorker(BatchWorker):
    """One detection worker: batches of frames through the detector; :meth:`run` until ``stop`` is set."""

    name = "detect"
    inputs = (Kafka.FRAMES,)
    outputs = (Kafka.DETECTIONS, Kafka.DEADLETTER)
    tick_interval_s = PURGE_EVERY_S

    def __init__(self, settings: WorkerSettings, detector: Detector | None = None, store: Store | None = None) -> None:
        super().__init__(
            settings.kafka, settings.group or DEFAULT_GROUP, settings.session_timeout_ms, settings.topic_partitions
        )
        from cloud.detect import create_detector

        self.settings = settings
        self.config = settings.detect
        self.batch_size = self.config.batch_size
        self.max_wait_s = self.config.max_wait_ms / 1000
        self.detector = detector or create_detector(self.config)
        self.store = store or Store(settings.store_url)
        sizes = ", ".join(f"{w}x{h}" for w, h in self.detector.inputs)
        log.info("detecting with %s (inputs %s)", self.detector.model_id, sizes)

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        try:
            return self._handle(batch, publisher)
        except SQLAlchemyError:
            log.exception("the store failed; the batch will be retried")
            return False

    def _handle(self, batch: list[Message], publisher: Publisher) -> bool:
        items: list[tuple[Message, Frame, np.ndarray]] = []
        for msg in batch:
            try:
                frame = decode(msg.value() or b"", Frame)
                pixels = decode_jpeg(frame.image, self.config.max_pixels)
            except (DecodeError, ImageRefused) as exc:
                self.dead_letter(publisher, msg, exc.reason, exc.detail)
                continue
            items.append((msg, frame, pixels))
        sorted_ = triage(self.store, items, lambda item: _key(item[1]), self.settings.max_attempts)
        poison = dead_letter_poison(self, publisher, sorted_.poison, "detecting on")
        done: list[tuple[Frame, list[Detection]]] = []
        for (_, frame, pixels), died in sorted_.suspects:
            log.warning("frame %s of %s was in hand when a worker died (%d): detecting on it alone",
                        frame.segment_id, frame.agent_id, died)  # fmt: skip
            self.tally.add("suspect")
            done += self._detect([(frame, pixels)])
        if sorted_.fresh:
            done += self._detect([(frame, pixels) for _, frame, pixels in sorted_.fresh])
        for frame, boxes in done:
            found = Detections(
                agent_id=frame.agent_id, segment_id=frame.segment_id, seq=frame.seq, captured_at=frame.captured_at,
                width=frame.image.width, height=frame.image.height, regions=frame.regions, boxes=boxes,
                model_id=self.detector.model_id, worker=self.settings.worker_name, detected_at=time.time(),
                summary=frame.summary,
            )  # fmt: skip
            if not self.store.store_detections(frame, found, self.config.images_dir):
                self.tally.add("duplicate")  # a redone batch: the stored result stands, sent again
            publisher.send(Kafka.DETECTIONS, frame.agent_id, encode(found))
            self.tally.add("detected")
        if not publisher.deliver():
            return False
        self.store.forget_attempts(poison)
        return True

    def _detect(self, frames: list[tuple[Frame, np.ndarray]]) -> list[tuple[Frame, list[Detection]]]:
        """Each frame's boxes (its regions' together), with the frames counted in hand meanwhile."""
        crops: list[Crop] = []
        owner: list[int] = []
        for k, (frame, pixels) in enumerate(frames):
            height, width = pixels.shape[:2]
            for r in frame.regions or []:
                crops.append(Crop(pixels[r.y : r.y + r.height, r.x : r.x + r.width], r.x, r.y, width, height))
                owner.append(k)
            if not frame.regions:
                crops.append(Crop(pixels))
                owner.append(k)
        with in_hand(self.store, [_key(frame) for frame, _ in frames]):
            found = self.detector.detect(crops)
        per_frame: list[list[yolo.Box]] = [[] for _ in frames]
        for k, boxes in zip(owner, found, strict=True):
            per_frame[k] += boxes
        out = []
        for (frame, _), boxes in zip(frames, per_frame, strict=True):
            if len(frame.regions) > 1:  # overlapping regions see the same object twice
                boxes = yolo.suppress(self.detector.cv2, boxes, self.config.nms_iou)
            out.append((frame, [_contract(b) for b in boxes]))
        return out

    def tick(self, publisher: Publisher) -> None:
        try:
            purged = self.store.purge_frames(time.time() - self.config.retention_s)
        except SQLAlchemyError:
            log.exception("purging old frames failed; the next tick tries again")
            return
        if purged:
            log.info("deleted %d frames older than %.0f s", purged, self.config.retention_s)
            self.tally.add("purged", purged)


def _contract(box: yolo.Box) -> Detection:
    return Detection(label=box.label, class_id=box.class_id, score=round(box.score, 4),
                     x1=round(box.x1, 1), y1=round(box.y1, 1), x2=round(box.x2, 1), y2=round(box.y2, 1))  # fmt: skip
