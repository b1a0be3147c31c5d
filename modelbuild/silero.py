"""The Silero VAD model for the agent's ``silero`` engine: copied, never downloaded.

The ONNX file (Silero VAD v6, MIT) ships inside installed packages: faster-whisper's assets
(``faster_whisper/assets/silero_vad_v6.onnx``) or the ``silero-vad`` wheel
(``silero_vad/data/silero_vad.onnx``; that wheel declares torch, so install it with ``--no-deps``:
only the file is used). :func:`prepare` copies it to ``<models_dir>/vad/silero_vad.onnx``, where
the agent's ``vad.model_path`` points by default. Idempotent: an identical file is left alone.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = "vad"
FILE = "silero_vad.onnx"
# (package, path inside it), in order of preference.
SOURCES = (
    ("faster_whisper", "assets/silero_vad_v6.onnx"),
    ("silero_vad", "data/silero_vad.onnx"),
)


class MissingVadModel(RuntimeError):
    """No installed package carries the Silero ONNX file."""


def target(models_dir: Path) -> Path:
    """Where the prepared model lies under ``models_dir``."""
    return Path(models_dir).expanduser() / FOLDER / FILE


def locate() -> Path:
    """The Silero ONNX file inside an installed package; MissingVadModel naming the options if none."""
    for package, inside in SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            path = Path(root) / inside
            if path.is_file():
                return path
    raise MissingVadModel(
        "no Silero VAD model found: install faster-whisper (pip install 'edgecap[dev]') or the file-only "
        "wheel `pip install --no-deps silero-vad`, then run `edgecap models prepare` again"
    )


def prepare(models_dir: Path, source: Path | None = None) -> bool:
    """Copy the Silero model to ``<models_dir>/vad/silero_vad.onnx``; True when it was (re)written."""
    source = source if source is not None else locate()
    dest = target(models_dir)
    if dest.is_file() and dest.read_bytes() == source.read_bytes():
        log.info("Silero VAD already prepared: %s", dest)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(source, partial)
    partial.chmod(0o644)
    partial.replace(dest)
    log.info("Silero VAD copied from %s to %s", source, dest)
    return True
