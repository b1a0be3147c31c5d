"""The bridge's Prometheus endpoint, scraped over HTTP while real traffic goes through real brokers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import Agent, bridge_settings, make_segment, scrape, unique, wait_until

from bridge.app import Bridge
from contracts import encode
from devtools.brokers import Mosquitto, Tansu, free_port

REPO = Path(__file__).resolve().parents[2]

# --- the test ---------------------------------------------------------------------------------

P = "edgecap_bridge_"


@pytest.mark.integration
def test_metrics_endpoint_counts_traffic(mosquitto: Mosquitto, kafka: Tansu) -> None:
    port = free_port()
    agent = Agent(mosquitto.port, unique("pi-m"))
    valid = [make_segment(agent.agent_id, seq, draft=seq < 2) for seq in range(3)]
    wrong_rate, spoofed = make_segment(agent.agent_id, 3, sample_rate=8000), make_segment(unique("pi-x"), 4)
    invalid = {  # reason -> (payload, the segment id its rejection names)
        "bad_json": (b'{"schema": "edgecap.segment.v1", "segment_id": "cut-0001", "agent', "cut-0001"),
        "bad_audio": (encode(wrong_rate), wrong_rate.segment_id),
        "spoofed_agent": (encode(spoofed), spoofed.segment_id),
    }
    try:
        with Bridge(bridge_settings(mosquitto, kafka.bootstrap, metrics_port=port)) as bridge:
            assert bridge.wait_ready(10)
            before = scrape(port)
            assert before[P + "mqtt_connected"] == 1 and before[P + "received_total"] == 0
            for s in valid:
                agent.publish(encode(s))
            agent.publish(encode(valid[0]))  # a resend: forwarded again, counted as a duplicate
            for raw, _ in invalid.values():
                agent.publish(raw)
            wait_until(lambda: scrape(port).get(P + "acknowledged_total") == 7, 15, "7 acknowledgements")
            wait_until(lambda: len(agent.accepted()) == 4 and len(agent.rejected()) == 3, 10, "the receipts")
            wait_until(lambda: scrape(port).get(P + "receipt_ids_total{kind=\"rejected\"}") == 3, 5, "receipt counts")
            m = scrape(port)
    finally:
        agent.close()

    assert m[P + "received_total"] == 7 and m[P + "acknowledged_total"] == 7
    assert m[P + 'produced_total{topic="edgecap.segments"}'] == 4  # 3 + the resend
    assert P + 'produced_total{topic="edgecap.drafts"}' not in m  # drafts travel inside their segments
    assert m[P + 'produced_total{topic="edgecap.deadletter"}'] == 3
    assert m[P + "duplicates_total"] == 1
    for reason in invalid:
        assert m[P + f'dead_lettered_total{{reason="{reason}"}}'] == 1, reason
    assert m[P + "in_flight"] == 0 and m[P + "intake_held"] == 0
    assert m[P + "receipts_total"] >= 1
    assert m[P + 'receipt_ids_total{kind="accepted"}'] == 4 and m[P + 'receipt_ids_total{kind="rejected"}'] == 3
    assert agent.rejected() == {sid: reason for reason, (_, sid) in invalid.items()}
    assert sorted(agent.accepted()) == sorted([s.segment_id for s in valid] + [valid[0].segment_id])
    # one Kafka delivery latency observation per confirmed record, in the histogram's buckets
    assert m[P + "delivery_seconds_count"] == 7 and m[P + 'delivery_seconds_bucket{le="+Inf"}'] == 7
    assert 0 < m[P + "delivery_seconds_sum"] < 10
    assert m[P + "retried_total"] == 0 and m[P + "delivery_failures_total"] == 0
    assert m[P + "producer_restarts_total"] == 0 and m[P + "errors_total"] == 0
    assert scrape(port) == {}  # the endpoint is gone once the bridge stopped



@pytest.mark.integration
def test_json_log_lines(mosquitto: Mosquitto, kafka: Tansu, tmp_path: Path) -> None:
    """``EDGECAP_LOG_FORMAT=json``: every line the bridge logs is one JSON object."""
    name = unique("bridge")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")} | {
        "EDGECAP_LOG_FORMAT": "json",
        "EDGECAP_BRIDGE_MQTT__PORT": str(mosquitto.port),
        "EDGECAP_BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
        "EDGECAP_BRIDGE_CLIENT_ID": name,
        "EDGECAP_BRIDGE_SHARED_GROUP": name,
        "EDGECAP_BRIDGE_DOWNLINK": "false",
    }
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: b"subscribed to" in log_path.read_bytes(), 20, "the subscription")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert entries and all(e["service"] == "bridge" and e["level"] and e["logger"] for e in entries)
    assert any(e["message"].startswith("subscribed to") for e in entries)
    assert any(e["message"] == f"bridge {name} stopped" for e in entries)
