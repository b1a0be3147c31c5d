"""Read a CTranslate2 ``model.bin`` into numpy arrays.

The format is the one ``ctranslate2/specs/model_spec.py`` (``_serialize``) writes, binary
version 6: a header (version, spec name, revision), the variables (name, shape, dtype id, byte
count, raw little-endian bytes), then aliases (name -> name of another variable).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

# Order of the DataType enum in include/ctranslate2/types.h.
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
SUPPORTED_VERSIONS = (6,)


class Ct2FormatError(ValueError):
    """The bytes are not a CTranslate2 model this reader understands."""


@dataclass
class Ct2Model:
    """The variables of a CTranslate2 model, aliases resolved to the arrays they name."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following an alias; weights of int8 models are dequantized."""
        name = self.aliases.get(name, name)
        value = self.variables[name]
        scale = self.variables.get(name + "_scale") if name.endswith("weight") else None
        if value.dtype == np.int8 and scale is not None:
            return value.astype(np.float32) / scale.astype(np.float32).reshape(-1, 1)
        return value

    def scalar(self, name: str) -> int | float:
        return self.variables[name].reshape(()).item()


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        except struct.error as exc:
            raise Ct2FormatError(f"truncated model.bin at byte {self.offset}") from exc
        self.offset += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str:
        length = self.unpack("H")
        raw = bytes(self.data[self.offset : self.offset + length - 1])
        self.offset += length
        return raw.decode("utf-8")

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise Ct2FormatError(f"truncated model.bin: variable needs {size} bytes at {self.offset}")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


def _array(raw: memoryview, dtype_id: int, shape: list[int]) -> np.ndarray:
    try:
        dtype = _DTYPES[dtype_id]
    except IndexError as exc:
        raise Ct2FormatError(f"unknown dtype id {dtype_id}") from exc
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def parse(data: bytes) -> Ct2Model:
    """Parse the bytes of a ``model.bin``; arrays are read-only views into ``data``."""
    cursor = _Cursor(data)
    version = cursor.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise Ct2FormatError(f"unsupported CTranslate2 binary version {version}")
    spec = cursor.string()
    revision = cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = [cursor.unpack("I") for _ in range(cursor.unpack("B"))]
        dtype_id = cursor.unpack("B")
        size = cursor.unpack("I")
        variables[name] = _array(cursor.take(size), dtype_id, shape)
    aliases = {}
    for _ in range(cursor.unpack("I")):
        alias = cursor.string()
        aliases[alias] = cursor.string()
    if cursor.offset != len(data):
        raise Ct2FormatError(f"{len(data) - cursor.offset} trailing bytes after the aliases")
    return Ct2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
