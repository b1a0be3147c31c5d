"""The Darknet to ONNX converter on a small network of every layer YOLOv3-tiny uses, against OpenCV."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from modelbuild.darknet_onnx import DarknetError, convert, parse_cfg
from modelbuild.detector import check

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

HEAD = """
[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82
classes=2
num=4
"""
CFG = (
    """
# a YOLOv3-tiny in miniature: 2 classes, two heads
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1
"""
    + HEAD
    + """
[route]
layers = -4

[upsample]
stride=2

[route]
layers = -1, 0
"""
    + HEAD.replace("mask=0,1,2", "mask=1,2,3")
)
CONVS = [(3, 8, 3, True), (8, 16, 3, True), (16, 21, 1, False), (24, 21, 1, False)]  # in, out, size, batchnorm


def weights(seed: int = 0, convs: list[tuple[int, int, int, bool]] = CONVS) -> bytes:
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<iiiq", 0, 2, 0, 0)]  # version 0.2: images seen is an int64
    for c_in, c_out, size, bn in convs:
        parts.append(rng.normal(0, 0.1, c_out).astype("<f4").tobytes())  # biases
        if bn:
            parts.append(rng.uniform(0.5, 1.5, c_out).astype("<f4").tobytes())  # scales
            parts.append(rng.normal(0, 0.1, c_out).astype("<f4").tobytes())  # rolling mean
            parts.append(rng.uniform(0.5, 2.0, c_out).astype("<f4").tobytes())  # rolling variance
        parts.append(rng.normal(0, 0.3, c_out * c_in * size * size).astype("<f4").tobytes())
    return b"".join(parts)


def test_the_converted_network_gives_what_opencv_gives(tmp_path: Path) -> None:
    model, network = convert(CFG, weights())
    assert (network.width, network.height) == (64, 64)
    assert [h.anchors for h in network.heads] == [((10, 14), (23, 27), (37, 58)), ((23, 27), (37, 58), (81, 82))]
    (tmp_path / "net.cfg").write_text(CFG)
    (tmp_path / "net.weights").write_bytes(weights())
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    sidecar = {"width": 64, "height": 64, "anchors": [[list(a) for a in h.anchors] for h in network.heads]}
    assert check(tmp_path / "net.cfg", tmp_path / "net.weights", tmp_path / "model.onnx", sidecar) < 1e-4


def test_the_input_size_is_free(tmp_path: Path) -> None:
    import onnxruntime as ort

    model, _ = convert(CFG, weights())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"images": np.zeros((2, 3, 96, 128), np.float32)})
    assert [o.shape for o in outs] == [(2, 21, 48, 64), (2, 21, 96, 128)]


def test_weights_that_do_not_fit_the_cfg_are_refused() -> None:
    with pytest.raises(DarknetError, match="left over"):
        convert(CFG, weights() + b"\0" * 64)
    with pytest.raises(DarknetError, match="ends before"):
        convert(CFG, weights()[:-4])
    with pytest.raises(DarknetError, match="header"):
        convert(CFG, b"\0\0")


def test_unknown_layers_and_bad_cfgs_are_refused_by_name() -> None:
    with pytest.raises(DarknetError, match=r"\[dropout\] is not supported"):
        convert(CFG.replace("[upsample]", "[dropout]"), weights())
    with pytest.raises(DarknetError, match="starts with \\[net\\]"):
        parse_cfg("[convolutional]\nfilters=1\n")
    with pytest.raises(DarknetError, match="cannot read"):
        parse_cfg("[net]\nwidth 64\n")
    with pytest.raises(DarknetError, match="activation 'mish'"):
        convert(CFG.replace("activation=leaky", "activation=mish", 1), weights())
