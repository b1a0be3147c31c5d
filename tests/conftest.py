"""Shared fixtures: real brokers on free loopback ports and prepared models. A test that uses one
is in that fixture's tier whether or not it says so, so ``make test-fast`` never starts a broker or
loads a model by an oversight."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.brokers import Mosquitto, Tansu
from runtime.settings import models_dir as runtime_models_dir

TIER_OF_FIXTURE = {"mosquitto": "integration", "kafka": "integration", "models_dir": "models"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that uses a broker or the models (directly or through another fixture) with
    that tier, before ``-m`` selects."""
    for item in items:
        for fixture, marker in TIER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


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
    path = runtime_models_dir()
    if not (path / "tiny.en").is_dir():
        pytest.skip(f"models not prepared in {path}: run `edgecap models prepare --models-dir {path}`")
    return path


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that run a command's ``main`` in-process: it configures the process's logging
    (root handlers and level); put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
