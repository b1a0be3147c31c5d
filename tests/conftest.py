"""Shared fixtures: real brokers on free loopback ports and prepared models. A test that uses one
is in that fixture's tier whether or not it says so, so ``make test-fast`` never starts a broker or
loads a model by an oversight."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.store import Store
from devtools.brokers import Mosquitto, Tansu
from devtools.postgres import Postgres
from runtime.settings import models_dir as runtime_models_dir

TIER_OF_FIXTURE = {
    "mosquitto": "integration",
    "kafka": "integration",
    "postgres": "integration",
    "models_dir": "models",
}
STORE_BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.integration))
"""What the ``store_url`` fixture runs a test against: every store test runs on both (the
PostgreSQL run is in the integration tier, like the ``postgres`` fixture it uses)."""


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
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL cluster of this test session (Debian's ``postgresql``: initdb + pg_ctl in a
    temporary directory on a free loopback port)."""
    with Postgres() as cluster:
        yield cluster


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty caption store: an SQLite file, or a new database in the session's
    PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'captions.db'}"
    cluster: Postgres = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An empty caption store on each backend (the ``store_url`` parameters)."""
    s = Store(store_url)
    yield s
    s.close()


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
