"""Object detection on camera frames: YOLO-family detector engines, chosen by configuration.

Importing this package registers every engine in :data:`DETECTORS` without importing OpenCV or
onnxruntime (an engine imports them when it is built).
"""

from __future__ import annotations

from cloud.detect import (
    onnx_yolo,  # noqa: F401  (registers "onnx")
    opencv_darknet,  # noqa: F401  (registers "opencv")
)
from cloud.detect.base import DETECTORS, Crop, Detector, DetectorError
from cloud.detect.yolo import Box
from cloud.settings import DetectSettings

__all__ = ["DETECTORS", "Box", "Crop", "DetectSettings", "Detector", "DetectorError", "create_detector"]


def create_detector(settings: DetectSettings) -> Detector:
    """The detector named by ``settings.engine``, with its model loaded."""
    return DETECTORS.get(settings.engine)(settings)
