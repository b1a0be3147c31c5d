"""Photographs with known content, bundled in scikit-image's wheel, and where their object lies.

The boxes were drawn by eye on a grid over each picture (fractions of its width and height:
``x1, y1, x2, y2``), independently of any detector; a detection is "on the object" when its IoU
with the drawn box is at least :data:`MIN_IOU`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "astronaut.png": ("person", (0.0, 0.0, 0.72, 1.0)),
    "camera.png": ("person", (0.0, 0.1, 0.62, 1.0)),
    "chelsea.png": ("cat", (0.0, 0.0, 1.0, 1.0)),
    "coffee.png": ("cup", (0.27, 0.0, 0.72, 0.78)),
    "motorcycle_left.png": ("motorbike", (0.08, 0.22, 0.95, 0.93)),
}
MIN_IOU = 0.5


def folder() -> Path:
    import skimage

    return Path(skimage.data.__file__).parent


def load(name: str) -> np.ndarray:
    """The photograph as OpenCV reads it (``H x W x 3`` BGR uint8)."""
    import cv2

    image = cv2.imread(str(folder() / name))
    assert image is not None, name
    return image


def expected_box(name: str, width: int, height: int) -> tuple[float, float, float, float]:
    """The drawn box of ``name``'s object in pixels of a ``width`` x ``height`` picture."""
    x1, y1, x2, y2 = PHOTOS[name][1]
    return x1 * width, y1 * height, x2 * width, y2 * height


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
