"""The bridge retries Kafka deliveries itself: an outage longer than ``delivery_timeout_ms`` stalls nothing."""

from __future__ import annotations

import pytest
from support import Agent, bridge_settings, make_segment, scrape, segment_seqs, unique, wait_until

from bridge.app import Bridge
from contracts import encode
from devtools.brokers import Mosquitto, Tansu, free_port

P = "edgecap_bridge_"


@pytest.mark.integration
def test_kafka_outage_longer_than_delivery_timeout(mosquitto: Mosquitto) -> None:
    """Kafka (in memory) is killed for longer than the delivery timeout, then restarted empty:
    the bridge holds its intake (in flight bounded), retries, and delivers everything sent meanwhile,
    in per-agent order, once each."""
    kafka = Tansu(port=free_port()).start()
    port = free_port()
    settings = bridge_settings(
        mosquitto,
        kafka.bootstrap,
        metrics_port=port,
        max_in_flight=8,
        delivery_timeout_ms=1000,
        retry_backoff_min_ms=100,
        retry_backoff_max_ms=400,
    )
    settings.kafka.extra["reconnect.backoff.max.ms"] = 200
    agents = [Agent(mosquitto.port, unique(f"pi-{i}")) for i in range(2)]
    n = 15
    try:
        with Bridge(settings) as bridge:
            assert bridge.wait_ready(10)
            first = make_segment(agents[0].agent_id, 0)
            agents[0].publish(encode(first))
            wait_until(lambda: agents[0].accepted() == [first.segment_id], 10, "a receipt before the outage")

            kafka.kill()
            for seq in range(1, n + 1):  # interleaved, as mosquitto holds them for the bridge
                for a in agents:
                    a.publish(encode(make_segment(a.agent_id, seq)))
            wait_until(lambda: scrape(port).get(P + "retried_total", 0) >= 8, 15, "retry rounds during the outage")
            # two more rounds of the 8 held records: nothing may leak through or pile up meanwhile
            wait_until(lambda: scrape(port)[P + "retried_total"] >= 24, 15, "two more retry rounds")
            held = scrape(port)
            assert held[P + "intake_held"] == 1 and held[P + "acknowledged_total"] == 1
            assert held[P + "in_flight"] == 8 and held[P + "received_total"] <= 1 + 8 + 1  # bounded intake

            kafka.start()  # same port, empty (memory storage)
            wait_until(lambda: all(len(a.accepted()) == n + (a is agents[0]) for a in agents), 30, "all receipts")
            m = scrape(port)
        for a in agents:  # everything sent during the outage is there, once, in order
            assert segment_seqs(kafka.bootstrap, a.agent_id, n) == list(range(1, n + 1))
        assert m[P + "acknowledged_total"] == 1 + 2 * n and m[P + "in_flight"] == 0 and m[P + "intake_held"] == 0
        assert m[P + "delivery_failures_total"] >= 8 and m[P + "retried_total"] >= m[P + "delivery_failures_total"]
        assert m[P + 'produced_total{topic="edgecap.segments"}'] == 1 + 2 * n
        print(
            "retried", m[P + "retried_total"], "failures", m[P + "delivery_failures_total"],
            "producer restarts", m[P + "producer_restarts_total"],
        )
    finally:
        for a in agents:
            a.close()
        kafka.kill()  # in-memory; SIGTERM takes Tansu ~5 s
        kafka.close()
