"""Darknet YOLO (``.cfg`` + ``.weights``) to ONNX, written by us, checked against OpenCV's reader.

The detector's default weights are Darknet's YOLOv3-tiny (COCO, 80 classes), which OpenCV's DNN
module reads as they are. onnxruntime runs the same network faster on a CPU, so ``edgecap models
prepare`` converts it once: the layers of the ``.cfg`` become ONNX nodes, the batch normalisation of
each convolution is folded into its weights and bias, and the output is each ``[yolo]`` layer's raw
map (``N x anchors*(5+classes) x H x W``), decoded by :func:`cloud.detect.yolo.decode_darknet`.
The input's height and width are left free (any multiple of the network's stride, 32 for YOLO):
the ``.cfg``'s are only the size the network was trained at.
:func:`convert` supports the layers YOLOv3 and YOLOv3-tiny use (``convolutional``, ``maxpool``,
``upsample``, ``route``, ``shortcut``, ``yolo``); anything else is refused by name.

Darknet's weight file: a header (major, minor, revision as int32; images seen as int64 from
version 0.2 on, else int32), then per convolutional layer, in order: biases (or, with batch
normalisation, biases, scales, rolling means, rolling variances), then the kernel, all float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BN_EPSILON = 1e-5  # darknet's batchnorm: (x - mean) / sqrt(var + .00001)
LEAKY_SLOPE = 0.1
OPSET = 17


class DarknetError(ValueError):
    """A ``.cfg`` or ``.weights`` file this converter cannot read."""


@dataclass
class Section:
    """One ``[name]`` block of a ``.cfg`` file."""

    name: str
    options: dict[str, str] = field(default_factory=dict)

    def number(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetError(f"[{self.name}] has no {key}")
            return default
        return int(self.options[key])

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


@dataclass(frozen=True)
class YoloHead:
    """What decoding one ``[yolo]`` output needs: its anchors (pixels of the network's input) and class count."""

    output: str
    anchors: tuple[tuple[float, float], ...]
    classes: int


@dataclass(frozen=True)
class Network:
    """The converted network: the input size of its ``.cfg`` and its heads, in output order."""

    width: int
    height: int
    heads: tuple[YoloHead, ...]


def parse_cfg(text: str) -> list[Section]:
    """The sections of a Darknet ``.cfg`` (comments and blank lines dropped)."""
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append(Section(line[1:-1].strip()))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"cannot read .cfg line {raw!r}")
    if not sections or sections[0].name not in ("net", "network"):
        raise DarknetError("a .cfg starts with [net]")
    return sections


class _Weights:
    def __init__(self, data: bytes) -> None:
        if len(data) < 16:
            raise DarknetError("the .weights file is shorter than its header")
        major, minor, _ = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
        seen_bytes = 8 if major * 10 + minor >= 2 and major < 1000 else 4
        body = data[12 + seen_bytes :]
        if len(body) % 4:
            raise DarknetError("the .weights file does not hold whole float32 values")
        self.values = np.frombuffer(body, dtype="<f4")
        self.at = 0

    def take(self, n: int) -> np.ndarray:
        if self.at + n > self.values.size:
            raise DarknetError("the .weights file ends before the .cfg's layers do")
        out = self.values[self.at : self.at + n].astype(np.float32)
        self.at += n
        return out


def convert(cfg_text: str, weights: bytes) -> tuple[Any, Network]:
    """The ONNX model (``onnx.ModelProto``, input ``images``: ``N x 3 x H x W`` RGB in [0, 1]) and
    what decoding its outputs needs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sections = parse_cfg(cfg_text)
    net, layers = sections[0], sections[1:]
    width, height, channels = net.number("width"), net.number("height"), net.number("channels", 3)
    reader = _Weights(weights)
    nodes: list[Any] = []
    inits: list[Any] = []
    outputs: list[str] = []  # each layer's output tensor name
    out_channels: list[int] = []
    heads: list[YoloHead] = []
    current, current_c = "images", channels

    def name(i: int, what: str) -> str:
        return f"l{i}_{what}"

    for i, layer in enumerate(layers):
        kind = layer.name
        if kind == "convolutional":
            filters, size = layer.number("filters"), layer.number("size")
            stride, pad = layer.number("stride", 1), layer.number("pad", 0)
            padding = size // 2 if pad else layer.number("padding", 0)
            if layer.number("groups", 1) != 1:
                raise DarknetError(f"layer {i}: grouped convolutions are not supported")
            if layer.number("batch_normalize", 0):
                bias = reader.take(filters)
                scales, mean, var = reader.take(filters), reader.take(filters), reader.take(filters)
                kernel = reader.take(filters * current_c * size * size).reshape(filters, current_c, size, size)
                factor = scales / np.sqrt(var + BN_EPSILON)
                kernel = kernel * factor[:, None, None, None]
                bias = bias - mean * factor
            else:
                bias = reader.take(filters)
                kernel = reader.take(filters * current_c * size * size).reshape(filters, current_c, size, size)
            inits += [numpy_helper.from_array(kernel, name(i, "w")), numpy_helper.from_array(bias, name(i, "b"))]
            conv = name(i, "conv")
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, name(i, "w"), name(i, "b")],
                    [conv],
                    kernel_shape=[size, size],
                    strides=[stride, stride],
                    pads=[padding] * 4,
                )
            )
            activation = layer.options.get("activation", "linear")
            if activation == "leaky":
                nodes.append(helper.make_node("LeakyRelu", [conv], [name(i, "out")], alpha=LEAKY_SLOPE))
                current = name(i, "out")
            elif activation == "linear":
                current = conv
            else:
                raise DarknetError(f"layer {i}: activation {activation!r} is not supported")
            current_c = filters
        elif kind == "maxpool":
            size, stride = layer.number("size"), layer.number("stride", 1)
            padding = layer.number("padding", size - 1)  # darknet pads the end (right, bottom) with -inf
            begin = padding // 2
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [current],
                    [name(i, "out")],
                    kernel_shape=[size, size],
                    strides=[stride, stride],
                    pads=[begin, begin, padding - begin, padding - begin],
                )
            )
            current = name(i, "out")
        elif kind == "upsample":
            stride = layer.number("stride", 2)
            scales = numpy_helper.from_array(np.array([1, 1, stride, stride], dtype=np.float32), name(i, "scales"))
            inits.append(scales)
            nodes.append(helper.make_node("Resize", [current, "", name(i, "scales")], [name(i, "out")], mode="nearest"))
            current = name(i, "out")
        elif kind == "route":
            sources = [s if s >= 0 else i + s for s in layer.ints("layers")]
            if any(s < 0 or s >= i for s in sources):
                raise DarknetError(f"layer {i}: route to a layer that does not come before it")
            if len(sources) == 1:
                current, current_c = outputs[sources[0]], out_channels[sources[0]]
            else:
                nodes.append(helper.make_node("Concat", [outputs[s] for s in sources], [name(i, "out")], axis=1))
                current, current_c = name(i, "out"), sum(out_channels[s] for s in sources)
        elif kind == "shortcut":
            source = layer.number("from")
            source = source if source >= 0 else i + source
            if layer.options.get("activation", "linear") != "linear":
                raise DarknetError(f"layer {i}: shortcut activation is not supported")
            nodes.append(helper.make_node("Add", [current, outputs[source]], [name(i, "out")]))
            current = name(i, "out")
        elif kind == "yolo":
            anchors = layer.ints("anchors")
            pairs = [(float(anchors[2 * k]), float(anchors[2 * k + 1])) for k in range(len(anchors) // 2)]
            mask = layer.ints("mask") if "mask" in layer.options else list(range(len(pairs)))
            classes = layer.number("classes")
            if current_c != len(mask) * (5 + classes):
                raise DarknetError(f"layer {i}: {current_c} channels for {len(mask)} anchors of {classes} classes")
            heads.append(YoloHead(current, tuple(pairs[m] for m in mask), classes))
        else:
            raise DarknetError(f"layer {i}: [{kind}] is not supported")
        outputs.append(current)
        out_channels.append(current_c)
    if reader.at != reader.values.size:
        raise DarknetError(f"{reader.values.size - reader.at} weights left over: the .cfg does not match the .weights")
    if not heads:
        raise DarknetError("the .cfg has no [yolo] layer")
    graph = helper.make_graph(
        nodes,
        "darknet-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [
            helper.make_tensor_value_info(
                h.output, TensorProto.FLOAT, ["N", len(h.anchors) * (5 + h.classes), f"H{k}", f"W{k}"]
            )
            for k, h in enumerate(heads)
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecap")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, Network(width, height, tuple(heads))


def convert_files(cfg: Path, weights: Path) -> tuple[Any, Network]:
    """:func:`convert` of the files."""
    return convert(cfg.read_text(), weights.read_bytes())
