"""``detect.engine = "opencv"``: a Darknet network (``.cfg`` + ``.weights``) through OpenCV's DNN module.

The anchor the ``onnx`` engine is measured against (``benchmarks/detect.py``) and checked against
(``edgecap models prepare`` converts the same weights to ONNX and compares the two outputs).
OpenCV's ``[yolo]`` layers return rows ``cx, cy, w, h`` (fractions of the input), the objectness,
then each class's score (objectness times class probability); they become the shared candidate rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.detect import files
from cloud.detect.base import DETECTORS, Detector, DetectorError
from cloud.settings import DetectSettings

SUBFOLDER = "darknet"


@DETECTORS.register
class OpenCvDarknet(Detector):
    type_key = "opencv"

    def __init__(self, settings: DetectSettings) -> None:
        super().__init__(settings)
        folder = settings.model_dir / SUBFOLDER if (settings.model_dir / SUBFOLDER).is_dir() else settings.model_dir
        cfg, weights = _one(folder, "*.cfg"), _one(folder, "*.weights")
        self.net = self.cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.outputs = self.net.getUnconnectedOutLayersNames()
        self.inputs = [(size, size) for size in settings.input_sizes]  # Darknet takes any multiple of 32
        self.labels = files.labels(settings.labels_file or folder / files.LABELS)
        if settings.threads:
            self.cv2.setNumThreads(settings.threads)
        self.model_id = settings.model_id or files.model_id(cfg.stem, "opencv", [cfg, weights])

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(batch)
        outs = self.net.forward(self.outputs)
        n = batch.shape[0]
        per_image = np.concatenate([np.asarray(o).reshape(n, -1, np.asarray(o).shape[-1]) for o in outs], 1)
        rows = per_image[:, :, [0, 1, 2, 3, *range(5, per_image.shape[2])]].astype(np.float32)
        rows[:, :, [0, 2]] *= batch.shape[3]
        rows[:, :, [1, 3]] *= batch.shape[2]
        return list(rows)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise DetectorError(
            f"expected one {pattern} in {folder}, found {len(found)}: prepare it with "
            "`edgecap models prepare --detector yolov3-tiny`"
        )
    return found[0]
