"""The tests' own helpers: a child process configured by :func:`support.service_env` loads exactly the
settings the test built, or the proofs would test a bridge other than the one they describe."""

from __future__ import annotations

import pytest
from support import service_env

from bridge.settings import BridgeSettings
from edge_agent.settings import AgentSettings
from runtime.settings import KafkaSettings, MqttSettings


def test_service_env_round_trips_through_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    bridge = BridgeSettings.load(
        mqtt=MqttSettings(port=1884, password="hunter2", session_expiry_s=600),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9093", extra={"reconnect.backoff.max.ms": 1000}),
        allowed_sample_rates=[8000, 16000],
        downlink=False,
        log_format="json",
    )
    agent = AgentSettings.load(
        agent_id="pi-9", outbox={"path": "/tmp/outbox.sqlite3", "full_policy": "refuse_new_audio"}, heartbeat_s=2
    )
    env = service_env(bridge) | service_env(agent)
    assert env["EDGECAP_BRIDGE_MQTT__PASSWORD"] == "hunter2"  # in clear, for the child
    assert env["EDGECAP_BRIDGE_KAFKA__EXTRA"] == '{"reconnect.backoff.max.ms": 1000}'
    assert "EDGECAP_BRIDGE_MAX_IN_FLIGHT" not in env  # defaults stay defaults
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert BridgeSettings.load() == bridge and AgentSettings.load() == agent


def test_none_is_refused_rather_than_passed_as_text() -> None:
    with pytest.raises(ValueError, match="EDGECAP_AGENT_VAD__EARLY_WINDOW_S"):
        service_env(AgentSettings.load(vad={"early_window_s": None}))
