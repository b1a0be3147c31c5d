"""The house's layers, read from the imports: no package imports a package above it.

    edgecap (command line, demo, operator commands)              on top
    edge_agent · bridge · cloud (services) · modelbuild · devtools (tools)
    runtime (settings base, service entry, logging, MQTT credentials, Kafka, plugins)
    contracts (wire messages, topics, ids, file formats)          at the bottom

Packages on one floor do not import each other either: a service never reaches into another service
(they talk through MQTT and Kafka) nor into a tool. Every import counts, including those inside
functions (heavy imports are deferred, but they are still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

FLOORS: dict[str, int] = {
    "contracts": 0,
    "runtime": 1,
    "edge_agent": 2,
    "bridge": 2,
    "cloud": 2,
    "modelbuild": 2,
    "devtools": 2,
    "edgecap": 3,
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """The first-party packages a module imports, with the line of each import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in FLOORS}
    return found


def violations() -> list[str]:
    out = []
    for package, floor in FLOORS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for target, line in sorted(imported_packages(path)):
                if target != package and FLOORS[target] >= floor:
                    where = path.relative_to(REPO)
                    out.append(f"{where}:{line}: {package} (floor {floor}) imports {target} (floor {FLOORS[target]})")
    return out


def test_no_package_imports_a_package_above_it_or_beside_it() -> None:
    assert violations() == []


def test_every_package_of_the_project_has_a_floor() -> None:
    """A new top-level package must be placed in the layers before it can be used."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(FLOORS)
    for package in FLOORS:
        assert f'"{package}*"' in pyproject, f"{package} is not in the wheel's package list"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from cloud.store import Store\n", {("cloud", 1)}),
        ("import bridge.app\n", {("bridge", 1)}),
        ("def f():\n    from edgecap.demo import main\n", {("edgecap", 2)}),
        ("from . import sibling\nimport numpy\n", set()),
    ],
)
def test_imports_are_read_wherever_they_stand(tmp_path: Path, source: str, expected: set[tuple[str, int]]) -> None:
    module = tmp_path / "m.py"
    module.write_text(source, encoding="utf-8")
    assert imported_packages(module) == expected


def test_the_readme_layout_table_matches_the_folders() -> None:
    """Every folder of the repository is in the README's layout table, and every row is a folder."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1].rstrip("/") for line in table.splitlines() if line.startswith("| `")}
    folders = {
        p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "__init__.py").exists()
    }
    assert rows == folders | {"tests", "benchmarks", "k3s", "ansible"}  # the packages, and what is not Python
    assert all((REPO / row).is_dir() for row in rows)
