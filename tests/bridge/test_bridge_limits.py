"""The Kafka record limit and delivery errors that can never succeed.

A record over the limit is refused before it is produced, and a record Kafka (here: its client, as
the local broker enforces no limit) refuses for good is dead-lettered instead of retried: in both
cases the agent's receipt rejects it with its reason, it is counted, and the segments around it flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from support import Agent, bridge_settings, make_segment, read_keyed, read_topic, scrape, unique, wait_until

from bridge.app import Bridge, uplink_producer_config
from bridge.limits import BATCH_HEADER_BYTES, fitted_dead_letter, permanent_reason, record_bytes
from bridge.settings import BridgeSettings
from contracts import DeadLetter, Kafka, Reason, Segment, Up, decode, encode, mqtt_topic
from devtools.brokers import Mosquitto, Tansu, free_port
from runtime.kafka import KAFKA_MAX_RECORD_BYTES

P = "edgecap_bridge_"


@pytest.fixture
def agent(mosquitto: Mosquitto) -> Iterator[Agent]:
    a = Agent(mosquitto.port, unique("pi-lim"))
    yield a
    a.close()


def _letters(bootstrap: str, topic: str, want: int) -> list[tuple[bytes, DeadLetter]]:
    """The dead letters (raw record value, decoded) of messages from MQTT ``topic``, once ``want`` are there."""

    def mine(records: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes, DeadLetter]]:
        letters = [(v, decode(v, DeadLetter)) for _, v in records]
        return [(v, d) for v, d in letters if d.source == topic]

    return mine(read_topic(bootstrap, Kafka.DEADLETTER, lambda r: len(mine(r)) >= want))


def _send_three(agent: Agent, big_seconds: float) -> tuple[Segment, Segment, Segment]:
    """A small segment, a big one, a small one, in this order."""
    segments = (
        make_segment(agent.agent_id, 0),
        make_segment(agent.agent_id, 1, seconds=big_seconds),
        make_segment(agent.agent_id, 2),
    )
    for s in segments:
        agent.publish(encode(s))
    return segments


def _rejection_detail(agent: Agent, segment_id: str) -> str:
    with agent.lock:
        return next(r.detail for receipt in agent.receipts for r in receipt.rejected if r.segment_id == segment_id)


# --- with real brokers ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_segment_over_the_record_limit_is_refused_before_kafka(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent
) -> None:
    """The bridge's limit below a segment's record: refused as too_large, never produced (nothing
    failed, nothing retried), its dead letter cut to fit the limit; the segments around it go through."""
    limit, port = 20_000, free_port()
    settings = bridge_settings(mosquitto, kafka.bootstrap, metrics_port=port, kafka_max_record_bytes=limit)
    with Bridge(settings) as bridge:
        assert bridge.wait_ready(10)
        before, big, after = _send_three(agent, 1.0)  # 1 s: ~43 kB as JSON; 0.1 s: ~4.6 kB
        assert record_bytes(agent.agent_id, encode(big)) > limit > record_bytes(agent.agent_id, encode(after))
        wait_until(lambda: big.segment_id in agent.rejected() and len(agent.accepted()) == 2, 15, "the receipts")
        wait_until(lambda: scrape(port).get(P + "acknowledged_total") == 3, 10, "every message acknowledged")
        m = scrape(port)
    assert agent.accepted() == [before.segment_id, after.segment_id]
    assert agent.rejected() == {big.segment_id: Reason.TOO_LARGE.value}
    assert f"over the limit of {limit}" in _rejection_detail(agent, big.segment_id)
    assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, 2) == [encode(before), encode(after)]

    [(value, letter)] = _letters(kafka.bootstrap, mqtt_topic(agent.agent_id, Up.SEGMENTS), 1)
    assert letter.reason == Reason.TOO_LARGE.value and letter.agent_id == agent.agent_id
    assert letter.truncated and 0 < len(letter.payload) < settings.deadletter_payload_bytes
    assert encode(big).startswith(letter.payload)  # as much of it as fits
    assert limit - 200 < record_bytes(agent.agent_id, value) <= limit

    assert m[P + 'dead_lettered_total{reason="too_large"}'] == 1
    assert m[P + 'produced_total{topic="edgecap.segments"}'] == 2
    assert m[P + 'produced_total{topic="edgecap.deadletter"}'] == 1
    assert m[P + "delivery_failures_total"] == 0 and m[P + "retried_total"] == 0
    assert not any(k.startswith(P + "kafka_refused_total") for k in m)
    assert m[P + "in_flight"] == 0 and m[P + "intake_held"] == 0 and m[P + "errors_total"] == 0


@pytest.mark.integration
def test_a_record_the_kafka_client_refuses_is_dead_lettered_not_retried(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer's own limit below the bridge's (a broker whose limit is lower than the bridge was
    told): librdkafka refuses the record with MSG_SIZE_TOO_LARGE. That is never retried: the segment
    is dead-lettered (its dead letter, too large as well, goes again without payload), rejected in
    the receipt and counted, and the segment after it is delivered."""
    import bridge.app

    client_limit = 60_000

    def smaller_client_limit(s: BridgeSettings) -> dict[str, Any]:
        return uplink_producer_config(s) | {"message.max.bytes": client_limit}

    monkeypatch.setattr(bridge.app, "uplink_producer_config", smaller_client_limit)
    port = free_port()
    settings = bridge_settings(mosquitto, kafka.bootstrap, metrics_port=port)
    assert settings.kafka_max_record_bytes == KAFKA_MAX_RECORD_BYTES  # the bridge's own check lets it through
    with Bridge(settings) as bridge:
        assert bridge.wait_ready(10)
        before, big, after = _send_three(agent, 2.0)  # 2 s: ~86 kB as JSON
        assert record_bytes(agent.agent_id, encode(big)) > client_limit
        wait_until(lambda: big.segment_id in agent.rejected() and len(agent.accepted()) == 2, 15, "the receipts")
        wait_until(lambda: scrape(port).get(P + "acknowledged_total") == 3, 10, "every message acknowledged")
        m = scrape(port)
    assert agent.accepted() == [before.segment_id, after.segment_id]
    assert agent.rejected() == {big.segment_id: Reason.TOO_LARGE.value}
    assert "MSG_SIZE_TOO_LARGE" in _rejection_detail(agent, big.segment_id)
    assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, 2) == [encode(before), encode(after)]

    [(_, letter)] = _letters(kafka.bootstrap, mqtt_topic(agent.agent_id, Up.SEGMENTS), 1)
    assert letter.reason == Reason.TOO_LARGE.value and "MSG_SIZE_TOO_LARGE" in letter.detail
    assert letter.payload == b"" and letter.truncated  # 64 KiB of it would not fit the client's limit

    # the segment and its first dead letter, each refused once, neither retried
    assert m[P + 'kafka_refused_total{error="MSG_SIZE_TOO_LARGE"}'] == 2
    assert m[P + 'dead_lettered_total{reason="too_large"}'] == 1
    assert m[P + 'produced_total{topic="edgecap.segments"}'] == 2
    assert m[P + 'produced_total{topic="edgecap.deadletter"}'] == 1
    assert m[P + "delivery_failures_total"] == 0 and m[P + "retried_total"] == 0
    assert m[P + "deadletters_lost_total"] == 0 and m[P + "errors_total"] == 0
    assert m[P + "producer_restarts_total"] == 0
    assert m[P + "in_flight"] == 0 and m[P + "intake_held"] == 0


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, Reason.TOO_LARGE),
        (KafkaError.RECORD_LIST_TOO_LARGE, Reason.TOO_LARGE),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, Reason.KAFKA_REFUSED),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, Reason.KAFKA_REFUSED),
        (KafkaError.INVALID_RECORD, Reason.KAFKA_REFUSED),
        (KafkaError.INVALID_MSG, Reason.KAFKA_REFUSED),
        (KafkaError.POLICY_VIOLATION, Reason.KAFKA_REFUSED),
        # transient: the broker away, a leader moving, a timeout, a replaced producer, an unknown error
        (KafkaError._MSG_TIMED_OUT, None),
        (KafkaError._TRANSPORT, None),
        (KafkaError._ALL_BROKERS_DOWN, None),
        (KafkaError._PURGE_QUEUE, None),
        (KafkaError._PURGE_INFLIGHT, None),
        (KafkaError._FATAL, None),
        (KafkaError.NOT_LEADER_FOR_PARTITION, None),
        (KafkaError.REQUEST_TIMED_OUT, None),
        (KafkaError.NOT_ENOUGH_REPLICAS, None),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, None),
        (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, None),
        (KafkaError.UNKNOWN, None),
    ],
)
def test_delivery_errors_are_permanent_or_transient(code: int, reason: Reason | None) -> None:
    assert permanent_reason(KafkaError(code)) is reason


def test_an_error_librdkafka_calls_retriable_is_transient() -> None:
    assert permanent_reason(KafkaError(KafkaError.INVALID_MSG, retriable=True)) is None


def test_record_bytes_is_what_librdkafka_checks_plus_a_batch_header() -> None:
    """A record whose size, less the batch header, is the client's limit is taken by ``produce()``;
    one byte more is refused as MSG_SIZE_TOO_LARGE (no broker needed: the check is local)."""
    limit, key = 10_000, "pi-kitchen"
    value = b"x" * (limit - record_bytes(key, b"") + BATCH_HEADER_BYTES)
    assert record_bytes(key, value) - BATCH_HEADER_BYTES == limit
    producer = Producer({
        "bootstrap.servers": f"127.0.0.1:{free_port()}", "message.max.bytes": limit,
        "logger": logging.getLogger("test.kafka"),
    })
    try:
        producer.produce("t", value, key)
        with pytest.raises(KafkaException) as refused:
            producer.produce("t", value + b"x", key)
        assert refused.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
        assert permanent_reason(refused.value.args[0]) is Reason.TOO_LARGE
    finally:
        producer.purge()


def test_a_dead_letter_is_cut_to_fit_the_limit() -> None:
    payload = bytes(range(256)) * 400  # 100 kB
    whole = fitted_dead_letter(payload, "src", "pi-1", Reason.TOO_LARGE, "why", 1000, 50_000)
    assert decode(whole, DeadLetter).payload == payload[:1000]  # fits as asked
    for limit in (16_384, 20_000, 50_000):
        value = fitted_dead_letter(payload, "src", "pi-1", Reason.TOO_LARGE, "why", 64 * 1024, limit)
        letter = decode(value, DeadLetter)
        assert record_bytes("pi-1", value) <= limit and letter.truncated
        assert payload.startswith(letter.payload) and len(letter.payload) > (limit - 1000) * 3 // 4
    with pytest.raises(ValueError, match="over the limit"):
        fitted_dead_letter(payload, "src", "pi-1", Reason.TOO_LARGE, "why" * 300, 64 * 1024, 200)


def test_the_producer_enforces_the_bridges_limit() -> None:
    settings = BridgeSettings.load(kafka_max_record_bytes=50_000)
    assert uplink_producer_config(settings)["message.max.bytes"] == 50_000
    assert uplink_producer_config(BridgeSettings.load())["message.max.bytes"] == KAFKA_MAX_RECORD_BYTES == 1_048_588
