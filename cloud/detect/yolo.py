"""What every YOLO-family detector shares: the letterboxed input, the output layouts, the boxes.

An image goes in letterboxed (scaled to fit the network's input, aspect kept, the rest grey), as
Darknet feeds YOLOv3. Each layout's raw output becomes the same candidate rows, in the network
input's pixels: ``cx, cy, w, h, class scores...`` (a class score is the objectness times the class
probability where the layout has an objectness). :func:`boxes` keeps the candidates above their
class's threshold, maps them back to the image (and, for a crop, to the frame it came from) and runs
OpenCV's class-aware non-maximum suppression.

Layouts:

- ``darknet``: one raw map per ``[yolo]`` layer, ``anchors*(5+classes) x H x W`` (our conversion of a
  Darknet network, :mod:`modelbuild.darknet_onnx`); decoded with the layer's anchors.
- ``ultralytics``: YOLOv5u/v8/11 exports, ``(4+classes) x anchors``: ``cx, cy, w, h`` in input pixels,
  then class scores (no objectness).
- ``yolox``: YOLOX exports without decoding in the graph, ``anchors x (5+classes)``: offsets on the
  grids of strides 8, 16 and 32, log sizes, objectness, class scores (YOLOX's ``demo_postprocess``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LETTERBOX_FILL = 0.5  # darknet's grey
YOLOX_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Box:
    """One detection, in the pixels of the frame: top-left ``(x1, y1)``, bottom-right ``(x2, y2)``."""

    class_id: int
    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: Box) -> float:
        """Intersection over union of the two boxes."""
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        inter = max(0.0, w) * max(0.0, h)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the network's input: input pixel = image pixel * scale + pad."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(cv2: object, image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """``image`` (``H x W x 3`` BGR, uint8) as the network's input (``3 x height x width`` RGB float32
    in [0, 1]), aspect kept, centred on grey."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR  # type: ignore[attr-defined]
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)  # type: ignore[attr-defined]
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    out = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.float32)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized[:, :, ::-1] / np.float32(255.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1)), Letterbox(scale, float(pad_x), float(pad_y))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_darknet(
    maps: Sequence[np.ndarray], anchors: Sequence[Sequence[tuple[float, float]]], width: int, height: int
) -> np.ndarray:
    """Candidate rows of one image from its ``[yolo]`` maps (each ``anchors*(5+classes) x H x W``)."""
    rows = []
    for raw, head in zip(maps, anchors, strict=True):
        a = len(head)
        c, gh, gw = raw.shape
        p = raw.reshape(a, c // a, gh, gw).astype(np.float32)
        col = np.arange(gw, dtype=np.float32)[None, None, :]
        row = np.arange(gh, dtype=np.float32)[None, :, None]
        aw = np.array([x for x, _ in head], dtype=np.float32)[:, None, None]
        ah = np.array([y for _, y in head], dtype=np.float32)[:, None, None]
        cx = (_sigmoid(p[:, 0]) + col) * (width / gw)
        cy = (_sigmoid(p[:, 1]) + row) * (height / gh)
        bw = np.exp(np.clip(p[:, 2], -20, 20)) * aw
        bh = np.exp(np.clip(p[:, 3], -20, 20)) * ah
        scores = _sigmoid(p[:, 4:5]) * _sigmoid(p[:, 5:])
        block = np.concatenate([np.stack([cx, cy, bw, bh], 1), scores], 1)  # a x (4+classes) x gh x gw
        rows.append(block.transpose(2, 3, 0, 1).reshape(-1, block.shape[1]))  # by cell, then anchor: OpenCV's order
    return np.concatenate(rows, 0)


def decode_ultralytics(output: np.ndarray) -> np.ndarray:
    """Candidate rows of one image from an Ultralytics output (``(4+classes) x anchors``)."""
    return np.ascontiguousarray(output.T.astype(np.float32))


def decode_yolox(output: np.ndarray, width: int, height: int) -> np.ndarray:
    """Candidate rows of one image from a raw YOLOX output (``anchors x (5+classes)``)."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        gh, gw = height // stride, width // stride
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid, steps = np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)
    if grid.shape[0] != output.shape[0]:
        raise ValueError(f"a YOLOX output of {output.shape[0]} anchors does not fit a {width}x{height} input")
    out = output.astype(np.float32)
    xy = (out[:, :2] + grid) * steps
    wh = np.exp(np.clip(out[:, 2:4], -20, 20)) * steps
    return np.concatenate([xy, wh, out[:, 4:5] * out[:, 5:]], 1)


def boxes(
    cv2: object,
    rows: np.ndarray,
    fit: Letterbox,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    default_threshold: float,
    nms_iou: float,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    limit: tuple[int, int] | None = None,
) -> list[Box]:
    """The detections of candidate ``rows`` (network input pixels) in the image's pixels, shifted by
    ``offset`` (a crop's place in its frame) and clipped to ``limit`` (the frame's width, height),
    each above its class's threshold, after non-maximum suppression per class."""
    if rows.size == 0:
        return []
    scores = rows[:, 4:]
    class_ids = scores.argmax(1)
    best = scores[np.arange(scores.shape[0]), class_ids]
    floor = np.array([thresholds.get(label, default_threshold) for label in labels], dtype=np.float32)
    if floor.size < scores.shape[1]:
        floor = np.concatenate([floor, np.full(scores.shape[1] - floor.size, default_threshold, np.float32)])
    keep = best >= floor[class_ids]
    if not keep.any():
        return []
    rows, class_ids, best = rows[keep], class_ids[keep], best[keep]
    x1 = (rows[:, 0] - rows[:, 2] / 2 - fit.pad_x) / fit.scale + offset[0]
    y1 = (rows[:, 1] - rows[:, 3] / 2 - fit.pad_y) / fit.scale + offset[1]
    x2 = (rows[:, 0] + rows[:, 2] / 2 - fit.pad_x) / fit.scale + offset[0]
    y2 = (rows[:, 1] + rows[:, 3] / 2 - fit.pad_y) / fit.scale + offset[1]
    if limit is not None:
        x1, x2 = np.clip(x1, 0, limit[0]), np.clip(x2, 0, limit[0])
        y1, y2 = np.clip(y1, 0, limit[1]), np.clip(y2, 0, limit[1])
    return suppress(
        cv2,
        [
            Box(int(c), labels[c] if c < len(labels) else str(int(c)), float(s), float(a), float(b), float(d), float(e))
            for c, s, a, b, d, e in zip(class_ids, best, x1, y1, x2, y2, strict=True)
            if d > a and e > b
        ],
        nms_iou,
    )


def suppress(cv2: object, found: list[Box], nms_iou: float) -> list[Box]:
    """``found`` after non-maximum suppression per class (OpenCV's ``NMSBoxesBatched``), best first."""
    if not found:
        return []
    rects = [[b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1] for b in found]
    kept = cv2.dnn.NMSBoxesBatched(  # type: ignore[attr-defined]
        rects, [b.score for b in found], [b.class_id for b in found], 0.0, nms_iou
    )
    return sorted((found[int(i)] for i in np.asarray(kept).reshape(-1)), key=lambda b: -b.score)
