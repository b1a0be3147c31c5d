"""k3s/, checked offline: each overlay renders (``kubectl kustomize``); the core kinds pass
``kubernetes-validate --strict`` with not one warning; every custom resource passes its schema from
``k3s/schemas/`` (a kind without one fails); checkov passes with the reviewed skip list of
``k3s/.checkov.yaml``; yamllint passes on the sources; promtool checks the alert rules. Then what
only a server, or the services themselves, would catch: see ``test_k3s_references.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from k3s_objects import (
    K3S,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    SCHEMAS,
    checkov,
    group_version,
    is_core,
    of_kind,
    render,
    render_text,
    run,
    tool,
)

pytestmark = pytest.mark.deploy

LAYERS = (*(f"overlays/{o}" for o in OVERLAYS), "operators")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_one_namespace(overlay: str) -> None:
    """Every namespaced object lands in ``edgecap`` (an overlay's own resources too)."""
    docs = render(f"overlays/{overlay}")
    kinds = {d["kind"] for d in docs}
    assert {"Kafka", "Cluster", "StatefulSet", "Deployment", "ScaledObject", "PrometheusRule"} <= kinds
    stray = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "edgecap"
    ]
    assert not stray, f"objects outside the namespace edgecap: {stray}"


@pytest.mark.parametrize("layer", [f"overlays/{o}" for o in OVERLAYS])
def test_core_kinds_pass_kubernetes_validate_strict(layer: str, tmp_path: Path) -> None:
    """kubernetes-validate --strict on the core kinds (the operators layer has none: only HelmChart
    objects); it only warns on what it cannot check (a CRD, a removed apiVersion) and exits 0, so
    any output at all fails here."""
    core = [d for d in render(layer) if is_core(d)]
    assert len(core) > 30, f"{layer} renders only {len(core)} core objects"
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core), encoding="utf-8")
    validate = tool("kubernetes-validate", "pip install the dev extra (kubernetes-validate)")
    done = run(validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path))
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, f"kubernetes-validate on {layer}:\n{output}"


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    group, version = group_version(doc)
    path = SCHEMAS / group / f"{doc['kind'].lower()}_{version}.json"
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if not path.is_file():
        return [f"{name}: no schema {path.relative_to(ROOT)}: add the CRD's schema before using the kind"]
    validator = jsonschema.Draft7Validator(json.loads(path.read_text(encoding="utf-8")))
    return [
        f"{name}: {'/'.join(str(p) for p in err.absolute_path)}: {err.message}" for err in validator.iter_errors(doc)
    ]


@pytest.mark.parametrize("layer", LAYERS)
def test_custom_resources_pass_their_schemas(layer: str) -> None:
    custom = [d for d in render(layer) if not is_core(d)]
    assert custom
    errors = [e for doc in custom for e in _schema_errors(doc)]
    assert not errors, "\n".join(errors)


def test_a_custom_resource_without_a_schema_fails() -> None:
    """The schema check refuses what it cannot check, and a misspelt field."""
    unknown = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in _schema_errors(unknown)[0]
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "t"},
        "spec": {"partitions": 3, "replica": 3},
    }
    assert any("replica" in e for e in _schema_errors(topic))


def test_schemas_are_the_shared_catalogs_copy() -> None:
    """k3s/schemas/ is a copy of ../shared/deploy-schemas/ (CI clones only the repository, so the
    copy is what the tests use); where the shared folder exists, the copy must not have drifted."""
    shared = ROOT.parent / "shared" / "deploy-schemas"
    if not shared.is_dir():
        pytest.skip("../shared/deploy-schemas is not here (a CI clone): the repository's copy is checked above")
    copied = sorted(p.relative_to(SCHEMAS) for p in SCHEMAS.rglob("*.json"))
    assert copied
    for rel in copied:
        assert (SCHEMAS / rel).read_bytes() == (shared / rel).read_bytes(), f"{rel} differs from the catalog"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov(overlay: str, tmp_path: Path) -> None:
    """checkov's kubernetes policies on the rendered overlay; skips only those k3s/.checkov.yaml
    lists with their reasons. (checkov takes ~5 s a run here, most of it importing itself.)"""
    (tmp_path / f"{overlay}.yaml").write_text(render_text(f"overlays/{overlay}"), encoding="utf-8")
    started = time.monotonic()
    done = run(checkov(), "--config-file", str(K3S / ".checkov.yaml"), "-d", str(tmp_path), "-o", "json")
    elapsed = time.monotonic() - started
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    summary = [r.get("summary", {}) for r in reports]
    assert not failed and done.returncode == 0, "\n".join(failed) or done.stderr
    assert sum(s.get("parsing_errors", 0) for s in summary) == 0, summary
    resources = sum(s.get("resource_count", 0) for s in summary)
    # it counts every object, and each container again
    assert resources >= len(render(f"overlays/{overlay}")), f"checkov read only {resources} objects: {summary}"
    passed = sum(s.get("passed", 0) for s in summary)
    assert passed > 100, f"checkov checked almost nothing ({passed} passed checks in {elapsed:.1f} s)"


def test_yamllint() -> None:
    yamllint = tool("yamllint", "pip install the dev extra (yamllint)")
    done = run(yamllint, "--strict", "-c", str(K3S / ".yamllint.yaml"), str(K3S))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_alert_rules(tmp_path: Path) -> None:
    """The PrometheusRule's groups, as Prometheus itself would load them."""
    promtool = tool("promtool", "apt-get install prometheus (the Makefile's APT_PACKAGES)")
    rules = of_kind(render("base"), "PrometheusRule")
    assert rules
    for rule in rules:
        path = tmp_path / f"{rule['metadata']['name']}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
        done = run(promtool, "check", "rules", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
