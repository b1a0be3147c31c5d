"""The interface every detector engine implements, and the registry that picks one by name."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cloud.detect import yolo
from cloud.detect.yolo import Box
from cloud.settings import DetectSettings
from runtime.plugins import Registry, require

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    """A detector cannot start: a missing or unreadable model; the message says how to fix it."""


@dataclass(frozen=True)
class Crop:
    """A part of a frame to detect on: its pixels (``H x W x 3`` BGR uint8), where it lies in the
    frame (top-left corner) and the frame's size (boxes are clipped to it)."""

    image: np.ndarray
    x: int = 0
    y: int = 0
    frame_width: int | None = None
    frame_height: int | None = None


class Detector(ABC):
    """Finds objects in images: YOLO-family networks with a letterboxed input, batched.

    Subclasses set ``type_key`` (the ``detect.engine`` setting that selects them), register with
    ``@DETECTORS.register``, load their model in ``__init__`` (setting ``model_id``, ``labels`` and
    ``inputs``, the network's input sizes) and implement :meth:`infer`. Heavy imports happen
    in ``__init__`` (a missing package raises :class:`~runtime.plugins.MissingPackage` naming the extra).
    """

    type_key: ClassVar[str]
    model_id: str
    labels: list[str]
    inputs: list[tuple[int, int]]
    """``(width, height)`` of each input the network runs at: a model whose size is free runs at each
    of ``detect.input_sizes`` and the boxes of all are suppressed together (test-time scales)."""

    def __init__(self, settings: DetectSettings) -> None:
        self.settings = settings
        self.cv2: Any = require("cv2", "detect", "the detectors")

    @abstractmethod
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Candidate rows (``cx, cy, w, h, class scores...`` in input pixels) of each image of
        ``batch`` (``N x 3 x height x width``, RGB in [0, 1]; one of :attr:`inputs`)."""

    def detect(self, crops: Sequence[Crop]) -> list[list[Box]]:
        """The boxes of each crop, in its frame's pixels, best first."""
        out: list[list[Box]] = []
        step = self.settings.max_batch
        for at in range(0, len(crops), step):
            part = crops[at : at + step]
            found: list[list[Box]] = [[] for _ in part]
            for width, height in self.inputs:
                fitted = [yolo.letterbox(self.cv2, c.image, width, height) for c in part]
                rows = self.infer(np.stack([blob for blob, _ in fitted]))
                for k, (crop, (_, fit), candidates) in enumerate(zip(part, fitted, rows, strict=True)):
                    found[k] += self._boxes(crop, fit, candidates)
            if len(self.inputs) > 1:
                found = [yolo.suppress(self.cv2, boxes, self.settings.nms_iou) for boxes in found]
            out += found
        return out

    def _boxes(self, crop: Crop, fit: yolo.Letterbox, candidates: np.ndarray) -> list[Box]:
        """One crop's boxes at one input size, in its frame's pixels."""
        s = self.settings
        limit = (crop.frame_width or crop.image.shape[1], crop.frame_height or crop.image.shape[0])
        return yolo.boxes(self.cv2, candidates, fit, self.labels, s.thresholds, s.threshold, s.nms_iou,
                          offset=(crop.x, crop.y), limit=limit)  # fmt: skip

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release the model."""


DETECTORS: Registry[Detector] = Registry("detector")
