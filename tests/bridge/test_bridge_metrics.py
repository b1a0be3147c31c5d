"""The bridge's Prometheus endpoint, scraped over HTTP while real traffic goes through real brokers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from agents_sim import bridge_service
from support import Agent, bridge_settings, make_segment, scrape, unique, wait_until

from bridge.app import Bridge
from contracts import Status, Up, encode, mqtt_topic
from devtools.brokers import Mosquitto, Tansu, free_port

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
            heartbeat = Status(agent_id=agent.agent_id, online=True, at=time.time())  # counted apart
            agent.publish(encode(heartbeat), mqtt_topic(agent.agent_id, Up.STATUS))
            wait_until(lambda: scrape(port).get(P + "acknowledged_total") == 7, 15, "7 acknowledgements")
            wait_until(lambda: scrape(port).get(P + "statuses_forwarded_total", 0) >= 1, 10, "the status forwarded")
            wait_until(lambda: len(agent.accepted()) == 4 and len(agent.rejected()) == 3, 10, "the receipts")
            wait_until(lambda: scrape(port).get(P + "receipt_ids_total{kind=\"rejected\"}") == 3, 5, "receipt counts")
            m = scrape(port)
    finally:
        agent.close()

    assert m[P + "received_total"] == 7 and m[P + "acknowledged_total"] == 7
    assert m[P + "statuses_received_total"] >= 1 and m[P + "statuses_lost_total"] == 0
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
    """``log_format = "json"`` (``EDGECAP_BRIDGE_LOG_FORMAT``): every line the bridge logs is one JSON object."""
    name = unique("bridge")
    bridge = bridge_service(mosquitto, kafka.bootstrap, tmp_path, client_id=name, log_format="json")
    bridge.start()
    try:
        wait_until(lambda: b"subscribed to" in bridge.log_path.read_bytes(), 20, "the subscription")
        assert bridge.stop() == 0
    finally:
        bridge.kill()
    entries = [json.loads(line) for line in bridge.log_path.read_text().splitlines()]
    assert entries and all(e["service"] == "bridge" and e["level"] and e["logger"] for e in entries)
    assert any(e["message"].startswith("subscribed to") for e in entries)
    assert any(e["message"] == f"bridge {name} stopped" for e in entries)
