"""Shared fixtures: real brokers on free loopback ports, prepared models, generated speech."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.brokers import Mosquitto, Tansu

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka() -> Iterator[Tansu]:
    with Tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Where ``edgecap models prepare`` put the models (make test prepares them first)."""
    path = Path(os.environ.get("EDGECAP_MODELS_DIR", REPO / ".cache" / "models"))
    if not (path / "tiny.en").is_dir():
        pytest.skip(f"models not prepared in {path}: run `edgecap models prepare --models-dir {path}`")
    return path
