"""The files of a prepared detector: class names, the network's input size, a model id from a hash."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

LABELS = "labels.txt"
"""Class names, one per line, next to a prepared model's weights."""
SIDECAR = "model.json"
"""What decoding a converted network's outputs needs (layout, anchors, input size, labels)."""


def labels(path: Path | None) -> list[str]:
    """The class names in ``path`` (one per line); none if there is no such file."""
    if path is None or not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def model_id(name: str, engine: str, paths: Iterable[Path]) -> str:
    """``name@engine:hash``, the hash naming the weights as a transcription model's does."""
    from cloud.asr.model_files import weights_hash

    return f"{name}@{engine}:{weights_hash(paths)}"
