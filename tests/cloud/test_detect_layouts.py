"""The onnx detector on the output layouts of models a user may bring (Ultralytics, YOLOX).

The models here are tiny ONNX graphs whose output is a constant laid out as each family's export
lays it out, so the decoding, the layout guess, the class names and the letterbox mapping are
checked without weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cloud.detect import Crop, DetectSettings, create_detector

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("cv2")


def constant_model(path: Path, output: np.ndarray, side: int, names: str | None = None) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(output.astype(np.float32)))],
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names:
        helper.set_model_props(model, {"names": names})
    path.write_bytes(model.SerializeToString())
    return path


def test_an_ultralytics_model_with_its_class_names(tmp_path: Path) -> None:
    out = np.zeros((1, 6, 50), np.float32)  # (4 + 2 classes) x 50 anchors
    out[0, :, 7] = [32, 32, 20, 10, 0.1, 0.9]  # cx, cy, w, h in input pixels, then class scores
    out[0, :, 8] = [10, 10, 4, 4, 0.2, 0.1]  # under the threshold
    path = constant_model(tmp_path / "u.onnx", out, 64, "{0: 'apple', 1: 'pear'}")
    detector = create_detector(DetectSettings(model_file=path))
    assert detector.layout == "ultralytics" and detector.labels == ["apple", "pear"]  # type: ignore[attr-defined]
    image = np.zeros((128, 256, 3), np.uint8)  # letterboxed: scale 0.25, 16 px of grey above and below
    [box] = detector.detect([Crop(image, 1000, 2000, 4000, 4000)])[0]
    assert (box.label, round(box.score, 3)) == ("pear", 0.9)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((1000 + 88, 2000 + 44, 1000 + 168, 2000 + 84))


def test_a_yolox_model_with_a_labels_file(tmp_path: Path) -> None:
    out = np.zeros((1, 64 + 16 + 4, 7), np.float32)  # strides 8, 16, 32 on 64x64; 5 + 2 classes
    out[0, 9] = [0.5, 0.5, math.log(3), math.log(2), 0.9, 0.2, 0.8]  # grid (1, 1) of stride 8
    path = constant_model(tmp_path / "x.onnx", out, 64)
    (tmp_path / "labels.txt").write_text("apple\npear\n")
    detector = create_detector(DetectSettings(model_file=path, labels_file=tmp_path / "labels.txt"))
    assert detector.layout == "yolox"  # type: ignore[attr-defined]
    [box] = detector.detect([Crop(np.zeros((64, 64, 3), np.uint8))])[0]
    assert box.label == "pear" and box.score == pytest.approx(0.72)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((12 - 12, 12 - 8, 12 + 12, 12 + 8))


def test_a_model_without_names_numbers_its_classes(tmp_path: Path) -> None:
    out = np.zeros((1, 6, 50), np.float32)
    out[0, :, 0] = [32, 32, 8, 8, 0.7, 0.0]
    detector = create_detector(DetectSettings(model_file=constant_model(tmp_path / "n.onnx", out, 64)))
    assert [b.label for b in detector.detect([Crop(np.zeros((64, 64, 3), np.uint8))])[0]] == ["0"]


def test_overlapping_boxes_of_a_class_are_one_and_of_two_classes_two(tmp_path: Path) -> None:
    out = np.zeros((1, 6, 50), np.float32)
    out[0, :, 0] = [32, 32, 20, 20, 0.9, 0.0]
    out[0, :, 1] = [33, 32, 20, 20, 0.8, 0.0]  # the same apple, less sure
    out[0, :, 2] = [32, 33, 20, 20, 0.0, 0.6]  # a pear in the same place
    detector = create_detector(
        DetectSettings(model_file=constant_model(tmp_path / "o.onnx", out, 64, "{0: 'a', 1: 'p'}"))
    )
    boxes = detector.detect([Crop(np.zeros((64, 64, 3), np.uint8))])[0]
    assert [(b.label, round(b.score, 2)) for b in boxes] == [("a", 0.9), ("p", 0.6)]
