"""The rendered k3s objects, checked for what neither a schema nor a linter sees and only a running
cluster would show: selectors that select, ports that exist, names that name something, the Kafka
topics and ACLs the services' own code uses, the consumer groups of their settings, GPU pods with
their runtime class, Secrets that exist or are documented, metrics that the services export, and
mosquitto's configuration rendered from the project's one template.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from k3s_objects import (
    BASE,
    K3S,
    OVERLAYS,
    configmap_file,
    exported_metrics,
    matches,
    metric_names,
    named,
    of_kind,
    pod_templates,
    render,
)

from bridge.settings import BridgeSettings
from cloud.settings import DashboardSettings, WorkerSettings
from contracts.topics import Kafka

pytestmark = pytest.mark.deploy

WORKERS = ("transcribe", "reconcile", "detect")


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(f"overlays/{request.param}")


def _labels(template: dict[str, Any]) -> dict[str, str]:
    return dict(template["metadata"].get("labels") or {})


def _container_ports(template: dict[str, Any]) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }


def _settings(docs: list[dict[str, Any]], service: str, tmp_path: Path) -> Any:
    """A service's settings as the pod loads them: its TOML from the rendered ConfigMap."""
    path = tmp_path / f"{service}.toml"
    path.write_text(configmap_file(docs, "edgecap-config", f"{service}.toml"), encoding="utf-8")
    cls = {"bridge": BridgeSettings, "dashboard": DashboardSettings}.get(service, WorkerSettings)
    return cls.load(path)


# --- selectors, ports, names ---------------------------------------------------------------------


def test_workload_selectors_select_their_pods(docs: list[dict[str, Any]]) -> None:
    for workload, template in pod_templates(docs):
        selector = workload["spec"].get("selector")
        if selector is not None:
            assert matches(selector, _labels(template)), f"{workload['metadata']['name']}: selector misses its pods"


def test_services_select_pods_with_their_ports(docs: list[dict[str, Any]]) -> None:
    templates = [t for _, t in pod_templates(docs)]
    for service in of_kind(docs, "Service"):
        name, spec = service["metadata"]["name"], service["spec"]
        pods = [t for t in templates if matches(spec["selector"], _labels(t))]
        assert pods, f"Service {name} selects no pod"
        for port in spec["ports"]:
            target = port["targetPort"]
            for pod in pods:
                ports = _container_ports(pod)
                assert target in ports or target in ports.values(), f"Service {name}: no container port {target}"
    for workload in of_kind(docs, "StatefulSet"):
        named(docs, "Service", workload["spec"]["serviceName"])


def test_probes_use_ports_the_containers_open(docs: list[dict[str, Any]]) -> None:
    for workload, template in pod_templates(docs):
        ports = _container_ports(template)
        for container in template["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                spec = container.get(probe)
                if spec is None:
                    assert workload["kind"] == "Job", f"{workload['metadata']['name']} has no {probe}"
                    continue
                port = (spec.get("httpGet") or spec.get("tcpSocket"))["port"]
                assert port in ports, f"{workload['metadata']['name']}: {probe} on a port it does not open"


def test_disruption_budgets_and_monitors_select_pods(docs: list[dict[str, Any]]) -> None:
    templates = [t for _, t in pod_templates(docs) if "metadata" in t]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert any(matches(pdb["spec"]["selector"], _labels(t)) for t in templates), pdb["metadata"]["name"]
    for monitor in of_kind(docs, "PodMonitor"):
        selected = [t for t in templates if matches(monitor["spec"]["selector"], _labels(t))]
        assert {_labels(t)["app.kubernetes.io/name"] for t in selected} == {"bridge", *WORKERS}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in _container_ports(t) for t in selected)
    for monitor in of_kind(docs, "ServiceMonitor"):
        services = [
            s for s in of_kind(docs, "Service") if matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert services, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)


def test_every_pod_with_metrics_is_scraped(docs: list[dict[str, Any]]) -> None:
    monitors = of_kind(docs, "PodMonitor")
    for workload, template in pod_templates(docs):
        if "metrics" in _container_ports(template):
            name = workload["metadata"]["name"]
            assert any(matches(m["spec"]["selector"], _labels(template)) for m in monitors), name


def test_network_policies_select_pods(docs: list[dict[str, Any]]) -> None:
    """Each policy selects pods that exist here, or the operators' pods by their documented labels."""
    templates = [_labels(t) for _, t in pod_templates(docs)]
    operator_pods = [{"cnpg.io/cluster": "edgecap-db"}, {"strimzi.io/cluster": "edgecap", "strimzi.io/kind": "Kafka"}]
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        assert any(matches(spec["podSelector"], labels) for labels in templates + operator_pods), policy["metadata"]
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(matches(peer["podSelector"], labels) for labels in templates + operator_pods), peer


def test_ingress_routes_to_a_service_port(docs: list[dict[str, Any]]) -> None:
    for ingress in of_kind(docs, "Ingress"):
        assert ingress["spec"]["tls"], "the dashboard is served over TLS"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(docs, "Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_pods_run_as_non_root_with_read_only_roots(docs: list[dict[str, Any]]) -> None:
    for workload, template in pod_templates(docs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, workload["metadata"]["name"]
            assert context["allowPrivilegeEscalation"] is False
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert "memory" in limits and "cpu" in requests and "memory" in requests


# --- Kafka: the cluster, topics, users, groups ---------------------------------------------------


def test_strimzi_objects_name_the_kafka(docs: list[dict[str, Any]]) -> None:
    kafkas = {k["metadata"]["name"] for k in of_kind(docs, "Kafka")}
    assert kafkas == {"edgecap"}
    for kind in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
        for obj in of_kind(docs, kind):
            assert obj["metadata"]["labels"]["strimzi.io/cluster"] in kafkas, f"{kind} {obj['metadata']['name']}"
    pools = of_kind(docs, "KafkaNodePool")
    assert sum(p["spec"]["replicas"] for p in pools) == 3
    assert {r for p in pools for r in p["spec"]["roles"]} == {"controller", "broker"}


def test_a_topic_for_every_contract_topic(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind(docs, "KafkaTopic")}
    assert set(topics) == {t.value for t in Kafka}
    bridge = _settings(docs, "bridge", tmp_path)
    assert bridge.kafka_max_record_bytes == BridgeSettings.model_fields["kafka_max_record_bytes"].default
    broker = named(docs, "Kafka", "edgecap")["spec"]["kafka"]["config"]
    assert broker["message.max.bytes"] == bridge.kafka_max_record_bytes
    for name, spec in topics.items():
        config = spec["config"]
        assert spec["replicas"] == 3 and config["min.insync.replicas"] == 2, name
        assert config["max.message.bytes"] == bridge.kafka_max_record_bytes, name
        if name == Kafka.CONFIG:
            assert config["cleanup.policy"] == "compact"
        else:
            assert config["cleanup.policy"] == "delete" and config["retention.ms"] > 0, name


def _acls(docs: list[dict[str, Any]], user: str) -> dict[tuple[str, str], set[str]]:
    """(resource type, name) -> operations of a KafkaUser."""
    acls: dict[tuple[str, str], set[str]] = {}
    for acl in named(docs, "KafkaUser", user)["spec"]["authorization"]["acls"]:
        key = (acl["resource"]["type"], acl["resource"]["name"])
        acls.setdefault(key, set()).update(acl["operations"])
    return acls


def _worker_class(name: str) -> Any:
    if name == "transcribe":
        from cloud.transcribe import DEFAULT_GROUP, TranscribeWorker

        return TranscribeWorker, DEFAULT_GROUP
    if name == "reconcile":
        from cloud.reconcile import DEFAULT_GROUP, Reconciler

        return Reconciler, DEFAULT_GROUP
    from cloud.detect.worker import DEFAULT_GROUP, DetectWorker

    return DetectWorker, DEFAULT_GROUP


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_acls_are_its_topics_and_group(docs: list[dict[str, Any]], worker: str, tmp_path: Path) -> None:
    """A worker's user reads exactly its inputs and group (as its settings name it) and writes
    exactly its outputs: the code's own lists."""
    cls, default_group = _worker_class(worker)
    settings = _settings(docs, worker, tmp_path)
    group = settings.group or default_group
    expected = {("topic", str(t)): {"Read"} for t in cls.inputs}
    for topic in cls.outputs:
        expected.setdefault(("topic", str(topic)), set()).add("Write")
    expected[("group", group)] = {"Read"}
    assert _acls(docs, f"edgecap-{worker}") == expected


def test_bridge_and_dashboard_acls(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    from bridge.downlink import DOWN_TOPICS

    bridge = _settings(docs, "bridge", tmp_path)
    expected = {("topic", str(t)): {"Read"} for t in DOWN_TOPICS}
    for topic in (Kafka.SEGMENTS, Kafka.FRAMES, Kafka.STATUS, Kafka.DEADLETTER):
        expected[("topic", str(topic))] = {"Write"}
    expected[("group", bridge.downlink_group)] = {"Read"}
    assert _acls(docs, "edgecap-bridge") == expected
    # the dashboard: uploaded audio (jobs) as segments, images as frames, agents' configurations
    assert _acls(docs, "edgecap-dashboard") == {
        ("topic", str(t)): {"Write"} for t in (Kafka.SEGMENTS, Kafka.FRAMES, Kafka.CONFIG)
    }


def test_every_service_reaches_the_tls_listener(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    listener = named(docs, "Kafka", "edgecap")["spec"]["kafka"]["listeners"][0]
    assert listener["tls"] is True and listener["authentication"]["type"] == "tls"
    bootstrap = f"edgecap-kafka-bootstrap.edgecap.svc:{listener['port']}"
    for service in ("bridge", "dashboard", *WORKERS):
        kafka = _settings(docs, service, tmp_path).kafka
        assert kafka.bootstrap_servers == bootstrap, service
        assert kafka.extra["security.protocol"] == "ssl", service


def test_keda_scales_within_partitions_on_the_workers_groups(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in of_kind(docs, "KafkaTopic")}
    scaled = {s["metadata"]["name"]: s for s in of_kind(docs, "ScaledObject")}
    assert set(scaled) == {"transcribe", "detect"}
    keda_acls = _acls(docs, "edgecap-keda")
    for name, obj in scaled.items():
        named(docs, "Deployment", obj["spec"]["scaleTargetRef"]["name"])
        cls, default_group = _worker_class(name)
        group = _settings(docs, name, tmp_path).group or default_group
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["topic"] in {str(t) for t in cls.inputs}
            assert meta["consumerGroup"] == group
            assert obj["spec"]["maxReplicaCount"] <= partitions[meta["topic"]], name
            assert keda_acls[("topic", meta["topic"])] == {"Describe"}
            assert keda_acls[("group", group)] == {"Describe"}
            named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_deployments_scaled_by_keda_leave_replicas_to_it(docs: list[dict[str, Any]]) -> None:
    for obj in of_kind(docs, "ScaledObject"):
        assert "replicas" not in named(docs, "Deployment", obj["spec"]["scaleTargetRef"]["name"])["spec"]


# --- GPUs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_pods_carry_the_runtime_class_and_limit(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    gpu_pods = []
    for workload, template in pod_templates(docs):
        wants_gpu = any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in template["spec"]["containers"])
        has_class = template["spec"].get("runtimeClassName") == "nvidia"
        assert wants_gpu == has_class, f"{workload['metadata']['name']}: GPU limit and runtime class go together"
        if wants_gpu:
            gpu_pods.append(workload["metadata"]["name"])
    assert gpu_pods == (["transcribe"] if overlay == "gpu" else [])
    transcribe = named(docs, "ScaledObject", "transcribe")["spec"]
    assert transcribe["minReplicaCount"] == (0 if overlay == "gpu" else 1)


# --- Secrets -----------------------------------------------------------------------------------


def _referenced_secrets(docs: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for _, template in pod_templates(docs):
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    names.add(source["secret"]["name"])
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    names.add(env["valueFrom"]["secretKeyRef"]["name"])
    for auth in of_kind(docs, "TriggerAuthentication"):
        names |= {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
    for monitor in of_kind(docs, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            if "authorization" in endpoint:
                names.add(endpoint["authorization"]["credentials"]["name"])
    for ingress in of_kind(docs, "Ingress"):
        names |= {tls["secretName"] for tls in ingress["spec"]["tls"]}
    for issuer in of_kind(docs, "Issuer"):
        names.add(issuer["spec"]["ca"]["secretName"])
    return names


def test_every_secret_referenced_is_made_or_documented(docs: list[dict[str, Any]]) -> None:
    """Made by an operator from an object here (Strimzi: the cluster CA, one per KafkaUser;
    CloudNativePG: <cluster>-app; cert-manager: each Certificate's), or listed in k3s/README.md's
    "Secrets you make"."""
    made = {f"{k['metadata']['name']}-cluster-ca-cert" for k in of_kind(docs, "Kafka")}
    made |= {u["metadata"]["name"] for u in of_kind(docs, "KafkaUser")}
    made |= {f"{c['metadata']['name']}-app" for c in of_kind(docs, "Cluster")}
    made |= {c["spec"]["secretName"] for c in of_kind(docs, "Certificate")}
    readme = (K3S / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Secrets you make", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE))
    missing = _referenced_secrets(docs) - made - documented
    assert not missing, f"Secrets neither made by an operator nor documented in k3s/README.md: {sorted(missing)}"
    assert documented - _referenced_secrets(docs) == set(), "k3s/README.md documents a Secret nothing reads"


# --- the services' own endpoints and settings -----------------------------------------------------


def test_ports_and_probes_are_the_services_settings(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    for service in ("bridge", *WORKERS):
        settings = _settings(docs, service, tmp_path)
        workload = next(w for w, t in pod_templates(docs) if w["metadata"]["name"] == service)
        ports = _container_ports(workload["spec"]["template"])
        assert ports["metrics"] == settings.metrics_port, service
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    dashboard = _settings(docs, "dashboard", tmp_path)
    template = named(docs, "Deployment", "dashboard")["spec"]["template"]
    assert _container_ports(template)["http"] == dashboard.port and dashboard.host == "0.0.0.0"
    assert template["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert dashboard.secure_cookies, "behind the TLS Ingress the session cookie must be Secure"
    for target in dashboard.metrics_targets.values():
        host, port = re.match(r"http://([a-z0-9-]+)\.edgecap\.svc:(\d+)/metrics$", target).groups()  # type: ignore[union-attr]
        assert int(port) in {p["port"] for p in named(docs, "Service", host)["spec"]["ports"]}


def test_store_url_comes_from_the_databases_secret(docs: list[dict[str, Any]]) -> None:
    """Workers and dashboard read CloudNativePG's uri as the file of their --secrets-dir named like
    the setting's environment variable."""
    for name in (*WORKERS, "dashboard"):
        template = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        args = template["containers"][0]["args"]
        mount = next(m for m in template["containers"][0]["volumeMounts"] if m["name"] == "secrets")
        assert args[args.index("--secrets-dir") + 1] == mount["mountPath"]
        volume = next(v for v in template["volumes"] if v["name"] == "secrets")["secret"]
        prefix = "EDGECAP_DASHBOARD_" if name == "dashboard" else "EDGECAP_WORKER_"
        assert volume["secretName"] == "edgecap-db-app"
        assert volume["items"] == [{"key": "uri", "path": prefix + "STORE_URL"}]


def test_bridge_client_ids_are_stable_pod_names(docs: list[dict[str, Any]]) -> None:
    bridge = named(docs, "StatefulSet", "bridge")
    assert bridge["spec"]["replicas"] == 2
    env = {e["name"]: e for e in bridge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EDGECAP_BRIDGE_CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


# --- metrics: alerts and the Grafana dashboard ----------------------------------------------------


def test_alerts_read_metrics_the_services_export(docs: list[dict[str, Any]]) -> None:
    exported = exported_metrics()
    rules = [r for pr in of_kind(docs, "PrometheusRule") for g in pr["spec"]["groups"] for r in g["rules"]]
    assert {"EdgecapConsumerLagGrowing", "EdgecapWorkerDeadLetters", "EdgecapDevicesOffline",
            "EdgecapBridgeNotReceiving"} <= {r["alert"] for r in rules}  # fmt: skip
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used and used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"


def test_grafana_dashboard_parses_and_queries_exported_metrics(docs: list[dict[str, Any]]) -> None:
    source = (BASE / "grafana" / "edgecap.json").read_text(encoding="utf-8")
    assert configmap_file(docs, "edgecap-grafana-dashboard", "edgecap.json") == source
    dashboard = json.loads(source)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    exported = exported_metrics()
    for expr in exprs:
        used = metric_names(expr)
        assert used and used <= exported, f"{expr}: {sorted(used - exported)} not exported"
    maps = [m for m in of_kind(docs, "ConfigMap") if m["metadata"]["name"] == "edgecap-grafana-dashboard"]
    assert maps and maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- mosquitto: one template, two renderings ---------------------------------------------------------


MOSQUITTO_RENDERING = [
    "--ca-dir", "/mosquitto/tls", "--accounts", "/mosquitto/accounts/dynamic-security.json",
    "config", "--client-certificates", "--plugin", "/usr/lib/mosquitto_dynamic_security.so",
    "--persistence-dir", "/mosquitto/data/",
]  # fmt: skip
"""The command (k3s/base/kustomization.yaml shows it) that renders the project's template for k3s."""


def test_mosquitto_conf_is_the_template_rendered(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    from edgecap.admin.devices_cli import main

    out = tmp_path / "mosquitto.conf"
    assert main([*MOSQUITTO_RENDERING, "--output", str(out)]) == 0
    committed = (BASE / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    assert committed == out.read_text(encoding="utf-8"), (
        "k3s/base/mosquitto/mosquitto.conf is not the template rendered: run `edgecap devices "
        + " ".join(MOSQUITTO_RENDERING)
        + " --output k3s/base/mosquitto/mosquitto.conf`"
    )
    assert configmap_file(docs, "mosquitto-config", "mosquitto.conf") == committed


def test_mosquitto_mounts_hold_the_files_its_conf_names(docs: list[dict[str, Any]]) -> None:
    conf = configmap_file(docs, "mosquitto-config", "mosquitto.conf")
    named_files = set(re.findall(r"^(?:cafile|certfile|keyfile|crlfile|plugin_opt_config_file) (\S+)$", conf, re.M))
    pod = named(docs, "StatefulSet", "mosquitto")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    provided: set[str] = set()
    for volume in pod["volumes"]:
        sources = volume.get("projected", {}).get("sources", []) or [volume]
        for source in sources:
            secret = source.get("secret")
            if secret:
                provided |= {f"{mounts[volume['name']]}/{item['path']}" for item in secret["items"]}
    assert named_files <= provided, sorted(named_files - provided)
    listeners = {int(p) for p in re.findall(r"^listener (\d+)", conf, re.M)}
    assert listeners == {p["containerPort"] for p in pod["containers"][0]["ports"]}
    exposed = named(docs, "Service", "mosquitto")["spec"]
    assert exposed["type"] == "LoadBalancer" and [p["port"] for p in exposed["ports"]] == [8883]
    bridge = tomllib.loads(configmap_file(docs, "edgecap-config", "bridge.toml"))["mqtt"]
    internal = named(docs, "Service", "mosquitto-internal")["spec"]["ports"]
    assert bridge["port"] in listeners - {8883} and [p["port"] for p in internal] == [bridge["port"]]
