"""The bridge's uplink fuzzed through MQTT: whatever a device publishes, each message is either
forwarded or dead-lettered with a reason, every one is acknowledged, and nothing hits an unexpected
error. Hypothesis draws the payloads (valid segments with one field replaced by any JSON value,
byte-level mutations of a valid segment, arbitrary JSON, arbitrary bytes); one real bridge, real
mosquitto and a real Kafka-protocol broker take them all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fuzzing
import pytest
from fuzzing import big_numbers, json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Agent, bridge_settings, make_segment, unique, wait_until

from bridge.app import Bridge
from contracts import encode
from devtools.brokers import Mosquitto, Tansu

pytestmark = pytest.mark.integration

AGENT = unique("fuzz")
SEGMENT = encode(make_segment(AGENT, 7))  # drawn once: hypothesis needs the same base in every example
VALID = json.loads(SEGMENT)
FIELDS = sorted(VALID) + ["audio.sample_rate", "audio.data", "audio.codec", "draft.text", "draft.produced_at"]



@st.composite
def one_field_replaced(draw: st.DrawFn) -> bytes:
    message: dict[str, Any] = json.loads(json.dumps(VALID))
    path = draw(st.sampled_from(FIELDS)).split(".")
    target = message
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(json_values | big_numbers)
    return json.dumps(message).encode()


def mutated() -> st.SearchStrategy[bytes]:
    return fuzzing.mutated(SEGMENT, [b'"seq":1,'])


payloads = st.lists(
    one_field_replaced() | mutated() | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200),
    min_size=1,
    max_size=8,
)


@pytest.fixture(scope="module")
def bridge(mosquitto: Mosquitto, kafka: Tansu) -> Iterator[Bridge]:
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, max_message_bytes=64 * 1024)) as running:
        assert running.wait_ready(10)
        yield running


@pytest.fixture(scope="module")
def device(mosquitto: Mosquitto) -> Iterator[Agent]:
    agent = Agent(mosquitto.port, AGENT)
    yield agent
    agent.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=payloads)
def test_every_message_is_forwarded_or_dead_lettered_and_acknowledged(
    bridge: Bridge, device: Agent, batch: list[bytes]
) -> None:
    before = bridge.stats()
    for raw in batch:
        device.publish(raw)
    sentinel = make_segment(AGENT, 10**6)  # published last: once it is receipted, the batch was handled
    device.publish(encode(sentinel))
    wait_until(lambda: sentinel.segment_id in device.accepted(), 20, "the sentinel's receipt")
    wait_until(lambda: bridge.stats()["acknowledged"] - before["acknowledged"] == len(batch) + 1, 20, "every ack")
    after = bridge.stats()
    assert after["errors"] == before["errors"]
    records = sum(after["produced"].values()) - sum(before["produced"].values())
    dead = sum(after["dead_lettered"].values()) - sum(before["dead_lettered"].values())
    # every message became exactly one record in Kafka: itself, or its dead letter (counted by reason)
    assert records == len(batch) + 1
    assert dead == after["produced"].get("edgecap.deadletter", 0) - before["produced"].get("edgecap.deadletter", 0)
