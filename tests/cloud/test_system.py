"""The dashboard's system view and its admin configuration of agents, against real services.

``GET /api/system`` scrapes a real bridge process and a real transcription worker process (each on
its own /metrics port, on brokers of this test) and a target where nothing listens; between two
calls a device sends segments and a bad message through the bridge, and the worker transcribes
them. ``POST /api/agents/{agent_id}/config`` is read back from ``edgecap.config`` by a real consumer,
and followed through a real bridge to a real agent link that applies it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents_sim import bridge_service
from cloud_procs import cloud_worker
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from support import Agent, bridge_settings, dashboard_user, make_segment, read_keyed, scrape, unique, wait_until

from bridge.app import Bridge
from cloud.agent_config import new_config
from cloud.dashboard import create_app, fleet
from cloud.dashboard.system import per_second, read_metrics
from cloud.settings import DashboardSettings, WorkerSettings
from cloud.store import Store
from contracts import AgentConfig, Kafka, decode, encode
from devtools.brokers import Mosquitto, Tansu, free_port
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.remote import RemoteConfig, config_path
from runtime.settings import KafkaSettings, MqttSettings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def dashboard(store: Store, headers: dict[str, str] | None = None, **settings: Any) -> TestClient:
    return TestClient(create_app(DashboardSettings(store_url="sqlite://", **settings), store), headers=headers)


def by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {service["name"]: service for service in answer["services"]}


# --- reading a /metrics page -------------------------------------------------------------------------


def test_metrics_are_read_into_throughput_lag_and_dead_letters() -> None:
    """What the bridge and the workers export, as prometheus_client writes it, reduced to the page's figures."""
    r = CollectorRegistry()
    Counter("edgecap_bridge_received", "", registry=r).inc(7)
    produced = Counter("edgecap_bridge_produced", "", ["topic"], registry=r)
    produced.labels(Kafka.SEGMENTS).inc(5)
    produced.labels(Kafka.DEADLETTER).inc(2)
    dead = Counter("edgecap_bridge_dead_lettered", "", ["reason"], registry=r)
    dead.labels("bad_json").inc(2)
    Gauge("edgecap_bridge_healthy", "", registry=r).set(1)
    bridge = read_metrics(generate_latest(r).decode())
    assert (bridge.messages_in, bridge.messages_out) == (7, 7)
    assert bridge.in_by == {"mqtt": 7} and bridge.out_by == {Kafka.SEGMENTS: 5, Kafka.DEADLETTER: 2}
    assert bridge.dead_letters == {"bad_json": 2} and bridge.lag == [] and bridge.healthy == 1

    w = CollectorRegistry()
    Counter("edgecap_worker_consumed", "", ["worker", "topic"], registry=w).labels("reconcile", Kafka.SEGMENTS).inc(9)
    Counter("edgecap_worker_produced", "", ["worker", "topic"], registry=w).labels("reconcile", Kafka.FINALS).inc(4)
    letters = Counter("edgecap_worker_dead_letters", "", ["worker", "reason"], registry=w)
    letters.labels("reconcile", "invalid").inc(1)
    letters.labels("transcribe", "invalid").inc(2)
    lag = Gauge("edgecap_worker_consumer_lag", "", ["worker", "group", "topic", "partition"], registry=w)
    lag.labels("reconcile", "edgecap-reconcile", Kafka.SEGMENTS, "0").set(3)
    lag.labels("reconcile", "edgecap-reconcile", Kafka.SEGMENTS, "1").set(4)
    lag.labels("reconcile", "edgecap-reconcile", Kafka.TRANSCRIPTS, "0").set(0)
    health = Gauge("edgecap_worker_healthy", "", ["worker"], registry=w)
    health.labels("reconcile").set(1)
    health.labels("transcribe").set(0)  # one worker of the process retries: the process is not healthy
    worker = read_metrics(generate_latest(w).decode())
    assert worker.in_by == {Kafka.SEGMENTS: 9} and worker.out_by == {Kafka.FINALS: 4}
    assert worker.dead_letters == {"invalid": 3} and worker.healthy == 0
    assert worker.lag == [
        {"group": "edgecap-reconcile", "worker": "reconcile", "topic": Kafka.SEGMENTS, "lag": 7, "partitions": 2},
        {"group": "edgecap-reconcile", "worker": "reconcile", "topic": Kafka.TRANSCRIPTS, "lag": 0, "partitions": 1},
    ]
    with pytest.raises(ValueError):
        read_metrics("<html><body>a login page</body></html>")
    assert per_second(30, 10, 4) == 5 and per_second(6, 50, 2) == 3  # a restarted service counts from zero


def test_metrics_targets_must_be_http_urls_under_plain_names() -> None:
    assert DashboardSettings(metrics_targets={"bridge": "http://b:9108/metrics"}).metrics_targets["bridge"]
    for bad in ({"bridge": "ftp://b/metrics"}, {"bridge": "b:9108"}, {"a b": "http://b/metrics"}):
        with pytest.raises(ValueError, match="metrics target"):
            DashboardSettings(metrics_targets=bad)


# --- GET /api/system against real services ------------------------------------------------------------


@pytest.mark.integration
def test_system_view_shows_real_services_totals_rates_lag_dead_letters_and_a_down_target(
    tmp_path: Path, store: Store
) -> None:
    agent_id, group = unique("pi-system"), unique("transcribe-system")
    ports = {"bridge": free_port(), "transcribe": free_port()}
    nowhere = free_port()  # nothing listens there
    with Mosquitto(workdir=tmp_path / "mosquitto") as mosquitto, Tansu() as kafka:
        bridge = bridge_service(mosquitto, kafka.bootstrap, tmp_path, metrics_port=ports["bridge"])
        worker = cloud_worker("transcribe", WorkerSettings.load(
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap), store_url=f"sqlite:///{tmp_path / 'w.db'}",
            group=group, session_timeout_ms=3000, topic_partitions=2, metrics_port=ports["transcribe"],
        ), tmp_path, engine="echo-test")  # fmt: skip
        targets = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
        targets["detect"] = f"http://127.0.0.1:{nowhere}/metrics"
        _, admin = dashboard_user(store, "admin")
        client = dashboard(store, admin, metrics_targets=targets, system_cache_s=0, metrics_timeout_s=2)
        bridge.start()
        worker.start()
        device = None
        try:

            def services_up() -> bool:
                up = by_name(client.get("/api/system").json())
                return up["bridge"]["up"] and up["transcribe"]["up"]

            wait_until(services_up, 60, "both services' /metrics", every_s=0.2,
                       detail=lambda: bridge.log_tail() + worker.log_tail())  # fmt: skip
            first = by_name(client.get("/api/system").json())
            assert first["bridge"]["in_per_s"] is not None  # services_up() scraped it before: a rate
            down = first["detect"]
            assert down["up"] is False and down["url"] == targets["detect"]
            assert "Connect" in down["error"] or "refused" in down["error"], down["error"]
            assert "messages_in" not in down

            connected = "edgecap_bridge_mqtt_connected"
            wait_until(lambda: scrape(ports["bridge"]).get(connected) == 1, 30, "the bridge's subscription")
            device = Agent(mosquitto.port, agent_id)
            segments = [make_segment(agent_id, seq) for seq in range(5)]
            for segment in segments:
                device.publish(encode(segment))
            device.publish(b"{not json")
            wait_until(lambda: len(device.accepted()) == 5, 30, "the receipts", detail=bridge.log_tail)

            def transcribed() -> dict[str, dict[str, Any]]:
                return by_name(client.get("/api/system").json())

            def counted() -> bool:
                now = transcribed()
                return (now["transcribe"].get("out_by_topic", {}).get(Kafka.TRANSCRIPTS) == 5
                        and now["bridge"].get("dead_letters", {}).get("bad_json") == 1)  # fmt: skip

            wait_until(counted, 60, "five transcripts and a dead letter counted", every_s=0.2, detail=worker.log_tail)
            before = first["bridge"]
            after = transcribed()
            b = after["bridge"]
            assert b["up"] and b["healthy"] == 1 and b["url"] == targets["bridge"]
            assert b["in_by_topic"]["mqtt"] - before["in_by_topic"].get("mqtt", 0) == 6  # five segments, one bad
            assert b["out_by_topic"][Kafka.SEGMENTS] == 5 and b["out_by_topic"][Kafka.DEADLETTER] == 1
            assert b["dead_letters"] == {"bad_json": 1} and b["dead_letters_total"] == 1
            assert b["rate_over_s"] > 0 and b["in_per_s"] == 0  # nothing came since the previous scrape

            t = after["transcribe"]
            assert t["up"] and t["healthy"] == 1
            assert t["in_by_topic"] == {Kafka.SEGMENTS: 5} and t["messages_in"] == 5
            assert t["out_by_topic"] == {Kafka.TRANSCRIPTS: 5} and t["dead_letters"] == {}

            def lag_shown() -> list[dict[str, Any]]:  # refreshed between batches at most every 5 s
                lags = transcribed()["transcribe"]["consumer_lag"]
                return [entry for entry in lags if entry["topic"] == Kafka.SEGMENTS]

            wait_until(lambda: bool(lag_shown()), 30, "the worker's consumer lag", every_s=0.2)
            lags = lag_shown()
            assert all(e["group"] == group and e["worker"] == "transcribe" and e["lag"] == 0 for e in lags), lags
            assert after["detect"]["up"] is False

            # a rate over traffic: three more segments between two scrapes
            mark = by_name(client.get("/api/system").json())["bridge"]
            for seq in range(5, 8):
                device.publish(encode(make_segment(agent_id, seq)))
            wait_until(lambda: len(device.accepted()) == 8, 30, "three more receipts")
            moved = by_name(client.get("/api/system").json())["bridge"]
            grown = moved["messages_in"] - mark["messages_in"]
            assert grown == 3
            assert moved["in_per_s"] == pytest.approx(grown / moved["rate_over_s"], rel=0.01)
            assert moved["in_per_s"] > 0 and moved["out_per_s"] > 0
        finally:
            if device is not None:
                device.close()
            worker.stop()
            bridge.stop()

        # the bridge gone: it is reported down with the reason, and the route still answers
        answer = client.get("/api/system")
        assert answer.status_code == 200
        gone = by_name(answer.json())["bridge"]
        assert gone["up"] is False and gone["error"]


def test_system_answers_from_its_cache_and_needs_a_login(store: Store) -> None:
    """Many browsers, one scrape: within ``system_cache_s`` the same answer, no new scrape."""
    target = f"http://127.0.0.1:{free_port()}/metrics"
    _, viewer = dashboard_user(store, "viewer")
    client = dashboard(store, viewer, metrics_targets={"gone": target}, system_cache_s=60, metrics_timeout_s=1)
    def scrapes() -> float:
        return REGISTRY.get_sample_value("edgecap_dashboard_scrapes_total", {"target": "gone", "outcome": "down"}) or 0

    before = scrapes()
    first = client.get("/api/system")
    assert first.status_code == 200  # a viewer reads the system view
    again = client.get("/api/system").json()
    assert again == first.json() and again["services"][0]["up"] is False
    assert scrapes() == before + 1
    assert dashboard(store).get("/api/system").status_code == 401
    assert dashboard(store, viewer).get("/api/system").json()["services"] == []  # no targets: nothing to show


# --- POST /api/agents/{agent_id}/config ------------------------------------------------------------------


def read_configs(kafka: Tansu, agent_id: str, want: int) -> list[AgentConfig]:
    return [decode(v, AgentConfig) for v in read_keyed(kafka.bootstrap, Kafka.CONFIG, agent_id, want)]


@pytest.mark.integration
def test_admin_sends_a_configuration_to_kafka_as_the_command_does(kafka: Tansu, store: Store) -> None:
    agent_id = unique("pi-dash-cfg")
    _, admin = dashboard_user(store, "admin")
    to_kafka = KafkaSettings(bootstrap_servers=kafka.bootstrap)
    with dashboard(store, admin, kafka=to_kafka) as client:
        started_us = time.time_ns() // 1000
        sent = client.post(f"/api/agents/{agent_id}/config", json={"muted": True, "heartbeat_s": 2.5})
        assert sent.status_code == 202, sent.text
        config = sent.json()["config"]
        assert (config["agent_id"], config["muted"], config["heartbeat_s"]) == (agent_id, True, 2.5)
        assert config["vad_aggressiveness"] is None and config["log_level"] is None  # left as they are
        assert started_us <= config["version"] <= time.time_ns() // 1000  # the command's rule: time in µs
        second = client.post(f"/api/agents/{agent_id}/config", json={"log_level": "DEBUG", "vad_aggressiveness": 3})
        assert second.status_code == 202, second.text
        assert second.json()["config"]["version"] > config["version"]

        got = read_configs(kafka, agent_id, 2)
        assert [c.version for c in got] == [config["version"], second.json()["config"]["version"]]
        assert got[0] == AgentConfig.model_validate(config) and got[1].settings() == {
            "vad_aggressiveness": 3, "log_level": "DEBUG"}  # fmt: skip
        # the command line's builder makes the same message from the same settings
        assert new_config(agent_id, {"muted": True, "heartbeat_s": 2.5}, version=got[0].version).settings() == (
            got[0].settings())  # fmt: skip

        for body, reason in [
            ({"heartbeat_s": 0}, "heartbeat_s"),
            ({"vad_aggressiveness": 9, "log_level": "TRACE"}, "vad_aggressiveness"),
            ({"muted": "maybe"}, "muted"),
            ({"volume": 11}, "unknown settings: volume"),
            ({"version": 99, "muted": True}, "unknown settings: version"),
            ({}, "nothing to set"),
            ({"muted": None}, "nothing to set"),
            ([1, 2], "JSON object"),
        ]:
            refused = client.post(f"/api/agents/{agent_id}/config", json=body)
            assert refused.status_code == 422, (body, refused.text)
            assert reason in refused.json()["detail"], (body, refused.json())
        not_json = client.post(f"/api/agents/{agent_id}/config", content=b"{oops",
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert not_json.status_code == 422 and "JSON object" in not_json.json()["detail"]
        bad_id = client.post("/api/agents/not an id!/config", json={"muted": True})
        assert bad_id.status_code == 422 and "agent_id" in bad_id.json()["detail"]
    assert len(read_configs(kafka, agent_id, 2)) == 2  # nothing refused reached Kafka

    _, viewer = dashboard_user(store, "viewer")
    with dashboard(store, viewer, kafka=to_kafka) as as_viewer, dashboard(store, kafka=to_kafka) as anonymous:
        assert as_viewer.post(f"/api/agents/{agent_id}/config", json={"muted": False}).status_code == 403
        assert anonymous.post(f"/api/agents/{agent_id}/config", json={"muted": False}).status_code == 401
    no_kafka = dashboard(store, admin).post(f"/api/agents/{agent_id}/config", json={"muted": False})
    assert no_kafka.status_code == 503 and "Kafka" in no_kafka.json()["detail"]
    assert len(read_configs(kafka, agent_id, 2)) == 2


def test_configuration_not_confirmed_by_kafka_is_a_503(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, admin = dashboard_user(store, "admin")
    monkeypatch.setattr(fleet, "CONFIG_TIMEOUT_S", 1.0)
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    with dashboard(store, admin, kafka=nowhere) as client:
        answer = client.post("/api/agents/pi-1/config", json={"muted": True})
    assert answer.status_code == 503, answer.text  # not confirmed in time, or timed out in librdkafka
    assert "config v" in answer.json()["detail"] and "for pi-1" in answer.json()["detail"]


@pytest.mark.integration
def test_a_mute_from_the_dashboard_reaches_a_real_agent_over_the_real_bridge(
    mosquitto: Mosquitto, kafka: Tansu, store: Store, tmp_path: Path
) -> None:
    agent_id = unique("pi-dash-mute")
    _, admin = dashboard_user(store, "admin")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    remote = RemoteConfig(agent_id, config_path(tmp_path / "outbox.sqlite3"), heartbeat_s=10.0)
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, downlink=True)) as bridge:
        assert bridge.wait_ready(10)
        link = MqttLink(agent_id, MqttSettings(port=mosquitto.port, session_expiry_s=60, keepalive_s=5), outbox,
                        on_final=lambda _f: None, on_config=remote.apply, config_state=remote.state)  # fmt: skip
        link.start()
        try:
            assert link.connected.wait(10)
            with dashboard(store, admin, kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap)) as client:
                sent = client.post(f"/api/agents/{agent_id}/config", json={"muted": True, "heartbeat_s": 3})
            assert sent.status_code == 202, sent.text
            version = sent.json()["config"]["version"]
            wait_until(lambda: remote.version == version, 30, "the dashboard's config applied by the agent")
            assert remote.muted.is_set() and remote.heartbeat_s == 3.0
            status = link.status()
            assert (status.config_version, status.muted) == (version, True)
            saved = json.loads(config_path(tmp_path / "outbox.sqlite3").read_text())
            assert saved["version"] == version and saved["muted"] is True
        finally:
            link.stop()
            outbox.close()
