"""A motion trigger: frame differencing on a small, blurred greyscale copy of each frame."""

from __future__ import annotations

from typing import Any

import numpy as np


class MotionTrigger:
    """Says whether a frame differs enough from the previous one.

    A pixel counts as changed when its grey level moved by more than ``pixel_delta`` (0-255); a
    frame has motion when at least ``threshold`` of its pixels changed. The first frame has nothing
    to compare with and counts as motion (it is the reference picture the cloud starts from).
    """

    def __init__(self, cv2: Any, threshold: float, *, pixel_delta: int = 25, width: int = 160) -> None:
        self.cv2 = cv2
        self.threshold = threshold
        self.pixel_delta = pixel_delta
        self.width = width
        self._previous: np.ndarray | None = None
        self.last_fraction: float | None = None

    def changed_fraction(self, image: np.ndarray) -> float | None:
        """The fraction of changed pixels against the previous frame (None for the first)."""
        cv2 = self.cv2
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height = max(1, round(grey.shape[0] * self.width / grey.shape[1]))
        small = cv2.GaussianBlur(cv2.resize(grey, (self.width, height), interpolation=cv2.INTER_AREA), (5, 5), 0)
        previous, self._previous = self._previous, small
        if previous is None or previous.shape != small.shape:
            return None
        changed = cv2.absdiff(small, previous) > self.pixel_delta
        return float(np.count_nonzero(changed)) / changed.size

    def __call__(self, image: np.ndarray) -> bool:
        self.last_fraction = self.changed_fraction(image)
        return self.last_fraction is None or self.last_fraction >= self.threshold
