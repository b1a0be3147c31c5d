"""Which folder an engine loads its weights from, and the model id that names those weights.

``model_dir`` may point at a model's root as ``edgecap models prepare`` lays it out
(``<models_dir>/<name>/`` with ``ct2/`` and ``hf/``), and each engine takes its own subfolder; or
it may point straight at the engine's folder (a downloaded checkpoint, say). The model id says
which weights and which engine made a transcript: ``whisper-base@ct2-int8:3f2a9c01b7de``, the hash
being the first 12 hex digits of the SHA-256 of the weights file(s), so that two workers that
call their model by the same name but load different weights never look alike in the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from cloud.asr.base import EngineError

log = logging.getLogger(__name__)

HASH_HEX = 12
HASH_CACHE = ".edgecap-weights-sha256.json"
"""Next to the weights: the hash with the size and mtime it was computed for (large-v3 takes seconds)."""
PREPARED_FOLDERS = ("ct2", "hf", "fp16", "fp32")


def engine_dir(model_dir: Path, subfolder: str, marker: str, engine: str) -> Path:
    """``model_dir`` itself if it holds ``marker`` (a glob), else ``model_dir/subfolder`` if that
    does; else :class:`EngineError` saying what was looked for and how to prepare it."""
    model_dir = model_dir.expanduser()
    for candidate in (model_dir, model_dir / subfolder):
        if any(candidate.glob(marker)):
            return candidate
    raise EngineError(
        f"the {engine} engine found no {marker} in {model_dir} or {model_dir / subfolder}: "
        "run `edgecap models prepare` (or set model_dir to a prepared model)"
    )


def model_name(weights_dir: Path) -> str:
    """A readable name from the folder: ``…/base/ct2`` → ``whisper-base``."""
    path = weights_dir.expanduser().resolve()
    name = path.parent.name if path.name in PREPARED_FOLDERS else path.name
    return name if name.startswith("whisper") else f"whisper-{name}"


def weights_hash(files: Iterable[Path]) -> str:
    """The first :data:`HASH_HEX` hex digits of the SHA-256 of ``files`` read in order; kept in
    :data:`HASH_CACHE` next to them while their sizes and mtimes stay (nothing if read-only)."""
    files = sorted(files)
    if not files:
        raise EngineError("no weights file to name the model by")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = files[0].parent / HASH_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp and isinstance(cached.get("sha256"), str):
            return str(cached["sha256"])[:HASH_HEX]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        partial = cache.with_name(cache.name + ".partial")
        partial.write_text(json.dumps({"files": stamp, "sha256": value}))
        partial.replace(cache)
    except OSError as exc:  # a read-only model folder: hash again next start
        log.debug("cannot cache the weights hash in %s: %s", cache, exc)
    return value[:HASH_HEX]


def model_id(weights_dir: Path, engine_tag: str, files: Iterable[Path]) -> str:
    """``<name>@<engine_tag>:<hash>``, e.g. ``whisper-tiny.en@hf-fp32:0c3b1a2f9e8d``."""
    return f"{model_name(weights_dir)}@{engine_tag}:{weights_hash(files)}"
