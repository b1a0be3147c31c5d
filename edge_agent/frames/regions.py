"""Motion boxes → ``contracts.Region`` in the pixels of the image actually sent.

The cloud crops each region and detects in it, so a region must hold the whole moving object with
some room around it and be big enough for the detector. Boxes come from the motion detector as
fractions of the frame (so they do not depend on the small picture motion is computed on, nor on
``max_width``); here they are scaled to the sent image, padded, grown to a minimum size, clipped
inside the image, merged where they overlap, and capped at ``contracts.bounds.MAX_REGIONS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from contracts import Region, bounds

MIN_MARGIN_PX = 8  # the least padding on each side, whatever the box's size
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, half-open
Fractions = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame


def to_regions(
    boxes: Sequence[Fractions],
    width: int,
    height: int,
    *,
    margin: float,
    min_side: int,
    max_regions: int = bounds.MAX_REGIONS,
) -> list[Region]:
    """The regions of ``boxes`` in a ``width`` x ``height`` image, ready for ``contracts.Frame``.

    ``margin`` is the padding on each side as a fraction of the box's size (at least
    :data:`MIN_MARGIN_PX`); a side shorter than ``min_side`` grows around its centre (shifted, not
    cut, where it would leave the image).
    """
    pixels = [_fit(_scale(b, width, height), width, height, margin, min_side) for b in boxes]
    merged = cap(merge_overlapping(pixels), max_regions)
    return [Region(x=x0, y=y0, width=x1 - x0, height=y1 - y0) for x0, y0, x1, y1 in sorted(merged)]


def merge_overlapping(boxes: Sequence[Box]) -> list[Box]:
    """Boxes that overlap replaced by their union, until none overlaps another."""
    current = list(boxes)
    if len(current) > 8 * bounds.MAX_REGIONS:  # a frame full of specks: quadratic merging is not worth it
        return [union(current)]
    changed = True
    while changed:
        changed = False
        out: list[Box] = []
        for box in current:
            for k, other in enumerate(out):
                if _overlap(box, other):
                    out[k] = union([box, other])
                    changed = True
                    break
            else:
                out.append(box)
        current = out
    return current


def cap(boxes: list[Box], max_regions: int) -> list[Box]:
    """At most ``max_regions`` boxes: the smallest is merged into the box whose union with it grows
    least, again until few enough (merging may make boxes overlap: those are merged too)."""
    while len(boxes) > max_regions:
        k = min(range(len(boxes)), key=lambda i: _area(boxes[i]))
        small = boxes.pop(k)
        j = min(range(len(boxes)), key=lambda i: _area(union([small, boxes[i]])) - _area(boxes[i]))
        boxes[j] = union([small, boxes[j]])
        boxes = merge_overlapping(boxes)
    return boxes


def union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _scale(box: Fractions, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (math.floor(x0 * width), math.floor(y0 * height), math.ceil(x1 * width), math.ceil(y1 * height))


def _fit(box: Box, width: int, height: int, margin: float, min_side: int) -> Box:
    x0, x1 = _axis(box[0], box[2], width, margin, min_side)
    y0, y1 = _axis(box[1], box[3], height, margin, min_side)
    return x0, y0, x1, y1


def _axis(lo: int, hi: int, limit: int, margin: float, min_side: int) -> tuple[int, int]:
    """One side of a box: padded, clipped to ``[0, limit]``, then grown to ``min_side`` around its centre."""
    pad = max(MIN_MARGIN_PX, math.ceil(margin * (hi - lo)))
    lo, hi = max(0, lo - pad), min(limit, hi + pad)
    need = min(min_side, limit)
    if hi - lo < need:
        lo = max(0, min(limit - need, (lo + hi - need) // 2))
        hi = lo + need
    return lo, max(hi, lo + 1)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
