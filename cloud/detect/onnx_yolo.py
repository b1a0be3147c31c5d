"""``detect.engine = "onnx"``: a YOLO-family ONNX network through onnxruntime.

Either the Darknet YOLOv3-tiny that ``edgecap models prepare`` converted (``<model_dir>/onnx/``:
``model.onnx`` and ``model.json`` with its layout, anchors, input size), or any YOLO ONNX file a user
supplies (``detect.model_file``) in the Ultralytics or YOLOX output layout, for a stronger model on
a GPU (``device = "cuda"`` with onnxruntime's CUDA provider). Class names come from the sidecar, the
model's own metadata (Ultralytics writes ``names``) or ``labels_file``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np

from cloud.detect import files, yolo
from cloud.detect.base import DETECTORS, Detector, DetectorError
from cloud.settings import DetectSettings
from runtime.plugins import require

SUBFOLDER = "onnx"
MODEL_FILE = "model.onnx"


@DETECTORS.register
class OnnxYolo(Detector):
    type_key = "onnx"

    def __init__(self, settings: DetectSettings) -> None:
        super().__init__(settings)
        ort = require("onnxruntime", "detect", "the onnx detector")
        path = settings.model_file or _prepared(settings.model_dir)
        if not path.is_file():
            raise DetectorError(
                f"no ONNX model at {path}: prepare one with `edgecap models prepare --detector "
                "yolov3-tiny`, or set detect.model_file"
            )
        sidecar_path = path.with_name(files.SIDECAR)
        sidecar: dict[str, Any] = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
        options = ort.SessionOptions()
        if settings.threads:
            options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        if settings.device == "cuda" and not cuda:
            raise DetectorError("detect.device is cuda but onnxruntime has no CUDA provider")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if cuda and settings.device != "cpu"
            else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.inputs = [(shape[3], shape[2])]  # a fixed input: the model's own
        else:
            self.inputs = [(size, size) for size in settings.input_sizes]
        self.layout = settings.layout if settings.layout != "auto" else sidecar.get("layout") or self._guess_layout()
        self.anchors = [[tuple(a) for a in head] for head in sidecar.get("anchors", [])]
        if self.layout == "darknet" and not self.anchors:
            raise DetectorError(f"{path}: a darknet layout needs its anchors in {sidecar_path}")
        self.labels = (
            files.labels(settings.labels_file) if settings.labels_file else sidecar.get("labels") or self._meta_names()
        )
        self.model_id = settings.model_id or files.model_id(
            sidecar.get("name", path.stem), f"onnx-{self.layout}", [path]
        )

    def _guess_layout(self) -> str:
        outputs = self.session.get_outputs()
        if len(outputs) > 1:
            raise DetectorError("an ONNX model with several outputs and no model.json: set detect.layout")
        shape = outputs[0].shape
        if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise DetectorError(f"cannot tell the layout of an output shaped {shape}: set detect.layout")
        return "ultralytics" if shape[1] < shape[2] else "yolox"

    def _meta_names(self) -> list[str]:
        names = self.session.get_modelmeta().custom_metadata_map.get("names")
        if not names:
            return []
        try:
            parsed = ast.literal_eval(names)  # Ultralytics: "{0: 'person', 1: 'bicycle', ...}"
        except (ValueError, SyntaxError):
            return []
        return [str(parsed[k]) for k in sorted(parsed)] if isinstance(parsed, dict) else []

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        outs = self.session.run(None, {self.input: batch.astype(np.float32, copy=False)})
        n, _, height, width = batch.shape
        if self.layout == "darknet":
            return [yolo.decode_darknet([o[i] for o in outs], self.anchors, width, height) for i in range(n)]
        if self.layout == "ultralytics":
            return [yolo.decode_ultralytics(outs[0][i]) for i in range(n)]
        return [yolo.decode_yolox(outs[0][i], width, height) for i in range(n)]

    def close(self) -> None:
        del self.session


def _prepared(model_dir: Path) -> Path:
    for candidate in (model_dir / MODEL_FILE, model_dir / SUBFOLDER / MODEL_FILE):
        if candidate.is_file():
            return candidate
    return model_dir / SUBFOLDER / MODEL_FILE
