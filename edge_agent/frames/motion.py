"""Motion on a small, blurred greyscale copy of each frame: whether something moved, and where.

:class:`MotionDetector` (what the agent uses) compares each frame with a slowly updated background
(a running average, as frigate does) rather than with the previous frame only: a slow object still
differs from a background that lags behind it, and an object that stops fades into the background
within a few ``background_s`` instead of being reported forever. The changed pixels are dilated into
blobs (OpenCV connected components); blobs with too few changed pixels are dropped, and the rest
are returned as boxes in fractions of the frame (see :mod:`edge_agent.frames.regions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.frames.regions import Fractions

SMALL_WIDTH = 160  # motion is computed on a copy this wide: cheap, and blind to sensor noise
SCENE_CHANGE = 0.5  # more of the picture than this changed at once: lights, exposure, a covered lens


def small_grey(cv2: Any, image: np.ndarray, width: int = SMALL_WIDTH) -> np.ndarray:
    """A ``width``-pixel wide, blurred greyscale copy of ``image`` (uint8)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    height = max(1, round(grey.shape[0] * width / grey.shape[1]))
    return cv2.GaussianBlur(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA), (5, 5), 0)


@dataclass(frozen=True)
class Motion:
    """What the detector saw in one frame.

    ``first``: nothing to compare with yet (the first frame, or the first after a reset or a change
    of size). ``fraction``: changed pixels of the kept blobs over the whole picture. ``boxes``: where
    they are, ``(x0, y0, x1, y1)`` as fractions of the frame. ``scene_change``: most of the picture
    changed at once; it moved, with no boxes (look at the whole frame), and the background restarts.
    """

    moved: bool
    first: bool = False
    scene_change: bool = False
    fraction: float = 0.0
    boxes: list[Fractions] = field(default_factory=list)


class MotionDetector:
    """Background subtraction on a small grey copy of each frame, with masks and blob boxes.

    A pixel has changed when its grey level is more than ``pixel_delta`` (0-255) from the
    background; pixels under ``masks`` (``(x, y, width, height)`` fractions of the frame) never
    change. Changed pixels are dilated and grouped into blobs; a blob with fewer changed pixels than
    ``min_area`` of the picture is dropped. A frame has moved when its kept blobs hold at least
    ``threshold`` of the picture's pixels. The background follows each frame with weight
    ``1 - exp(-dt / background_s)`` (``dt`` between the frames' capture times, so the fade does not
    depend on the frame rate); ``background_s = 0`` compares with the previous frame only. When
    more than :data:`SCENE_CHANGE` of the unmasked picture changed at once (the lights went on, the
    exposure jumped), the background is replaced by this frame rather than fading towards it for
    many frames (frigate does the same), and the frame counts as moved as a whole.
    """

    def __init__(
        self,
        cv2: Any,
        *,
        threshold: float,
        pixel_delta: int = 25,
        min_area: float = 0.0005,
        background_s: float = 10.0,
        masks: Sequence[tuple[float, float, float, float]] = (),
        width: int = SMALL_WIDTH,
    ) -> None:
        self.cv2 = cv2
        self.threshold = threshold
        self.pixel_delta = pixel_delta
        self.min_area = min_area
        self.background_s = background_s
        self.masks = list(masks)
        self.width = width
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._background: np.ndarray | None = None
        self._at = 0.0
        self._keep: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the background: the next frame is a first frame again (after a mute, say)."""
        self._background = None

    def __call__(self, image: np.ndarray, at: float) -> Motion:
        """The motion of ``image`` captured at ``at`` (seconds), and the background updated with it."""
        cv2 = self.cv2
        small = small_grey(cv2, image, self.width).astype(np.float32)
        background = self._background
        if background is None or background.shape != small.shape:
            self._background, self._at = small, at
            self._keep = self._unmasked(small.shape)
            return Motion(moved=False, first=True)
        assert self._keep is not None
        changed = (cv2.absdiff(small, background) > self.pixel_delta) & self._keep
        dt, self._at = max(0.0, at - self._at), at
        alpha = 1.0 if self.background_s == 0 else 1.0 - math.exp(-dt / self.background_s)
        cv2.accumulateWeighted(small, background, alpha)
        if not changed.any():
            return Motion(moved=False)
        changed_share = float(np.count_nonzero(changed)) / max(1, int(np.count_nonzero(self._keep)))
        if changed_share > SCENE_CHANGE:
            self._background = small
            return Motion(moved=True, scene_change=True, fraction=changed_share)
        blobs = cv2.dilate(changed.astype(np.uint8), self.kernel, iterations=2)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
        changed_in = np.bincount(labels[changed], minlength=count)  # changed pixels, not dilated ones
        least = max(1.0, self.min_area * changed.size)
        kept = [k for k in range(1, count) if changed_in[k] >= least]
        height, width = changed.shape
        boxes: list[Fractions] = []
        for k in kept:
            x, y, w, h = (int(v) for v in stats[k, :4])
            boxes.append((x / width, y / height, (x + w) / width, (y + h) / height))
        fraction = float(changed_in[kept].sum()) / changed.size if kept else 0.0
        return Motion(moved=bool(kept) and fraction >= self.threshold, fraction=fraction, boxes=boxes)

    def _unmasked(self, shape: tuple[int, ...]) -> np.ndarray:
        """True where motion counts: everywhere but the masks (rounded outwards to whole pixels)."""
        height, width = shape[:2]
        keep = np.ones((height, width), dtype=bool)
        for x, y, w, h in self.masks:
            x0, y0 = math.floor(x * width), math.floor(y * height)
            x1, y1 = math.ceil((x + w) * width), math.ceil((y + h) * height)
            keep[y0:y1, x0:x1] = False
        return keep
