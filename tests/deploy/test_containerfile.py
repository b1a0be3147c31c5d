"""The Containerfile, checked by reading it: no container engine runs here (no podman, buildah or
docker; nor in CI), so it is never built by the tests. What is checked is what a build would get
wrong silently: the targets the k3s manifests run exist, each runtime stage installs the wheel
with extras that exist in pyproject.toml, carries no build tools, runs as a numeric non-root user
(the pods' runAsUser) and has ``edgecap`` as its entry point.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

import pytest
from k3s_objects import OVERLAYS, ROOT, pod_templates, render

pytestmark = pytest.mark.deploy

BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|make|build-essential|git|curl|wget)\b")
TARGETS = {"bridge": {"bridge"}, "cloud": {"cloud"}, "detect": {"cloud", "detect"}, "models": {"models", "detect"}}
"""Each runtime target and the extras it installs (the image of each role: the Containerfile says why)."""


@dataclass
class Stage:
    name: str
    base: str
    lines: list[str] = field(default_factory=list)

    def instructions(self, keyword: str) -> list[str]:
        return [line.split(None, 1)[1] for line in self.lines if line.split(None, 1)[0].upper() == keyword]


def _stages() -> dict[str, Stage]:
    """The Containerfile's stages, continuation lines joined, comments dropped."""
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in filter(None, (x.strip() for x in logical.splitlines())):
        match = re.fullmatch(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            current = stages[match.group(2)] = Stage(match.group(2), match.group(1))
        elif current is not None:
            current.lines.append(line)
    return stages


def _extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def test_every_target_installs_existing_extras_only() -> None:
    stages = _stages()
    assert set(TARGETS) <= set(stages)
    known = _extras()
    for name, extras in TARGETS.items():
        installs = " ".join(stages[name].instructions("RUN"))
        found = re.findall(r"edgecap-\*\.whl\)\[([a-z,-]+)\]", installs)
        assert len(found) == 1, f"{name}: installs the wheel once, with its extras"
        assert set(found[0].split(",")) == extras, name
        assert extras <= known, f"{name}: {sorted(extras - known)} are not extras of pyproject.toml"
        assert "from=builder" in installs, f"{name}: the wheel comes from the builder stage"


def test_runtime_stages_carry_no_build_tools() -> None:
    stages = _stages()
    for name in TARGETS:
        chain, stage = [], stages[name]
        while True:  # the stage and the stages it is built FROM
            chain.append(stage)
            if stage.base not in stages:
                break
            stage = stages[stage.base]
        for link in chain:
            for run in link.instructions("RUN"):
                assert not BUILD_TOOLS.search(run), f"{name} (stage {link.name}) runs a build tool: {run}"
    assert "build" in " ".join(stages["builder"].instructions("RUN")), "the builder builds the wheel"


def test_runtime_stages_run_as_a_numeric_non_root_user_with_edgecap_as_entry_point() -> None:
    stages = _stages()
    for name in TARGETS:
        users = stages[name].instructions("USER")
        assert len(users) == 1 and re.fullmatch(r"\d+:\d+", users[0]), f"{name}: USER uid:gid, numeric"
        assert int(users[0].split(":")[0]) >= 10000, name
        assert [json.loads(e) for e in stages[name].instructions("ENTRYPOINT")] == [["edgecap"]], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k3s_runs_the_targets_as_their_user(overlay: str) -> None:
    """Every edgecap image the manifests name is a target here, run as that target's user."""
    stages = _stages()
    for workload, template in pod_templates(render(f"overlays/{overlay}")):
        for container in template["spec"]["containers"]:
            image = container["image"].split(":")[0].rsplit("/", 1)[-1]
            if not image.startswith("edgecap-"):
                continue
            target = image.removeprefix("edgecap-")
            assert target in TARGETS, f"{workload['metadata']['name']}: no Containerfile target for {image}"
            uid = int(stages[target].instructions("USER")[0].split(":")[0])
            assert template["spec"]["securityContext"]["runAsUser"] == uid, workload["metadata"]["name"]


def test_containerignore_keeps_secrets_and_bulk_out() -> None:
    ignored = set((ROOT / ".containerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "models", "tests"} <= ignored
