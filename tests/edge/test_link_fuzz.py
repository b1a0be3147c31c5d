"""The agent's MQTT link fuzzed from the downlink: whatever a client with the bridge's rights publishes
on the agent's receipts, captions and config topics, the link's network thread handles it (a
message for this agent is applied, anything else is counted as a bad downlink message and logged),
nothing escapes into ``downlink_errors``, and afterwards a good receipt still deletes its segment
from the outbox and a good final still reaches the caption files.

Hypothesis draws the messages: a valid receipt, final or configuration with one field replaced by
any JSON value or by a value at or just beyond one of its limits (a receipt of 10,000 ids and one of
100,000, ids that are not in the outbox, a final for a segment this device never captioned,
configurations out of range), byte-level mutations (deep nesting, invalid UTF-8, NaN), arbitrary
JSON and bytes, an empty payload, and messages of another agent or of another type, on any of the
three topics. The real link, outbox, remote configuration and caption sink take them all, through a
real mosquitto.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzzing
import paho.mqtt.client as mqtt
import pytest
from fuzzing import big_numbers, json_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import commit_segments, make_segment, unique, wait_until

from contracts import (
    AgentConfig,
    DecodeError,
    Down,
    Final,
    Receipt,
    Rejection,
    Transcript,
    decode,
    encode,
    mqtt_topic,
    new_segment_id,
)
from contracts import bounds as b
from devtools.brokers import Mosquitto
from edge_agent.captions.sink import CaptionSink
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.remote import RemoteConfig
from runtime.settings import MqttSettings

pytestmark = pytest.mark.integration

AGENT = unique("lfuzz")
NOW = time.time()
CAPTIONED = make_segment(AGENT, 3)  # a segment this device captioned: fuzzed finals reach its caption
_transcript = Transcript(text="final words", model_id="cloud", produced_at=NOW)
BASES: dict[str, dict[str, Any]] = {
    "receipt": json.loads(
        encode(
            Receipt(
                agent_id=AGENT,
                accepted=[new_segment_id()],
                rejected=[Rejection(segment_id=new_segment_id(), reason="bad_audio", detail="why")],
                issued_at=NOW,
            )
        )
    ),
    "final": json.loads(
        encode(Final(**CAPTIONED.header(), text="final words", source="cloud", version=2, transcript=_transcript))
    ),
    "config": json.loads(encode(AgentConfig(agent_id=AGENT, version=1, issued_at=NOW, heartbeat_s=30.0))),
}
TOPICS = [mqtt_topic(AGENT, channel) for channel in Down]


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of a message, nested ones included (a dict is a field too)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    return out


FIELDS = {kind: _paths(base) for kind, base in BASES.items()}
IDS = [f"s-{i}" for i in range(100_000)]  # valid segment ids, none in the outbox
LIMITS: dict[str, list[tuple[tuple[str, ...], Any]]] = {
    "receipt": [
        (("accepted",), IDS[: b.MAX_RECEIPT_IDS]), (("accepted",), IDS[: b.MAX_RECEIPT_IDS + 1]), (("accepted",), IDS),
        (("accepted",), ["dup"] * 50), (("accepted",), ["not an id"]), (("accepted",), []),
        (("rejected",), [{"segment_id": i, "reason": "invalid"} for i in IDS[: b.MAX_RECEIPT_IDS]]),
        (("rejected",), [{"segment_id": "x", "reason": "no_such_reason"}]),
        (("rejected",), [{"segment_id": "x", "reason": "invalid", "detail": "d" * (b.MAX_DETAIL_CHARS + 1)}]),
        (("agent_id",), "someone-else"), (("issued_at",), NOW + b.FUTURE_MARGIN_S + 3600),
    ],
    "final": [
        (("segment_id",), new_segment_id()),  # a final for a segment this device never captioned
        (("version",), 1), (("version",), b.MAX_INT), (("version",), b.MAX_INT + 1), (("version",), 0),
        (("text",), "t" * b.MAX_TEXT_CHARS), (("text",), "t" * (b.MAX_TEXT_CHARS + 1)), (("text",), "-->\n\n1\n"),
        (("seq",), b.MAX_INT), (("seq",), b.MAX_INT + 1), (("started_at",), b.EARLIEST_TIME),
        (("ended_at",), NOW + b.FUTURE_MARGIN_S - 3600), (("ended_at",), NOW + b.FUTURE_MARGIN_S + 3600),
        (("source",), "device"), (("agent_id",), "someone-else"),
        (("transcript", "segments"), [{"start": 0, "end": 1, "text": "x"}] * b.MAX_SPANS),
    ],
    "config": [
        (("heartbeat_s",), 3600), (("heartbeat_s",), 3600.001), (("heartbeat_s",), 0), (("heartbeat_s",), -1),
        (("heartbeat_s",), 1e-300), (("vad_aggressiveness",), 3), (("vad_aggressiveness",), 4),
        (("vad_aggressiveness",), -1), (("log_level",), "TRACE"), (("log_level",), "WARNING"),
        (("version",), 0), (("version",), b.MAX_INT), (("version",), b.MAX_INT + 1), (("muted",), "yes"),
        (("agent_id",), "someone-else"), (("issued_at",), NOW + b.FUTURE_MARGIN_S + 3600),
    ],
}  # fmt: skip



def _replace(kind: str, path: tuple[str, ...], value: Any) -> bytes:
    message = json.loads(json.dumps(BASES[kind]))
    target = message
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(message).encode()


@st.composite
def one_field_replaced(draw: st.DrawFn, kind: str) -> bytes:
    return _replace(kind, draw(st.sampled_from(FIELDS[kind])), draw(json_values | big_numbers))


@st.composite
def at_a_limit(draw: st.DrawFn, kind: str) -> bytes:
    path, value = draw(st.sampled_from(LIMITS[kind]))
    return _replace(kind, path, value)


def mutated(kind: str) -> st.SearchStrategy[bytes]:
    return fuzzing.mutated(json.dumps(BASES[kind]).encode(), [b'"version":1,', b'"schema":"edgecap.status.v1",'])


@st.composite
def downlink(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(BASES)))
    payload = draw(
        one_field_replaced(kind)
        | at_a_limit(kind)
        | mutated(kind)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=200)
        | st.just(b"")
    )
    return draw(st.sampled_from(TOPICS)), payload


def expected_outcome(payload: bytes) -> str:
    """The counter of the link a downlink message must land in."""
    try:
        message = decode(payload)
    except DecodeError:
        return "bad_downlink"
    if getattr(message, "agent_id", None) != AGENT:
        return "bad_downlink"
    kinds: dict[type, str] = {Receipt: "receipts", Final: "finals", AgentConfig: "configs"}
    return kinds.get(type(message), "bad_downlink")


OUTCOMES = ("bad_downlink", "receipts", "finals", "configs")


class Device:
    """The real link of one agent, with its outbox, remote configuration and caption sink."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.outbox = Outbox(workdir / "outbox.db")
        self.remote = RemoteConfig(AGENT, workdir / "config.json", heartbeat_s=30.0)
        self.captions = CaptionSink(workdir / "captions", terminal=False, write_interval_s=0)
        self.captions.draft(CAPTIONED.segment_id, CAPTIONED.seq, CAPTIONED.started_at, CAPTIONED.ended_at,
                            _transcript)  # fmt: skip
        self.link = MqttLink(
            AGENT,
            MqttSettings(port=port),
            self.outbox,
            on_final=self.captions.final,
            on_config=self.remote.apply,
            config_state=self.remote.state,
            resend_after_s=30,
        )
        self.link.start()
        assert self.link.connected.wait(10)

    def close(self) -> None:
        self.link.stop()
        self.captions.close()


class BridgeSide:
    """A client publishing on the agent's downlink topics, as the bridge does."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("fuzz-bridge"),
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def device(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    root = logging.getLogger()
    level = root.level  # fuzzed configurations set the log level of the process
    running = Device(mosquitto.port, tmp_path_factory.mktemp("link-fuzz"))
    yield running
    running.close()
    root.setLevel(level)


@pytest.fixture(scope="module")
def bridge(mosquitto: Mosquitto) -> Iterator[BridgeSide]:
    side = BridgeSide(mosquitto.port)
    yield side
    side.close()


def counts(link: MqttLink) -> Counter[str]:
    return Counter({name: link.counters[name] for name in (*OUTCOMES, "downlink_errors")})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(downlink(), min_size=1, max_size=8))
@example(batch=[(TOPICS[0], _replace(kind, path, value)) for kind in BASES for path, value in LIMITS[kind]])
@example(batch=[(topic, payload) for topic in TOPICS for payload in (b"", b"\xff", b"[" * 100_000, b"null")])
def test_no_downlink_message_stops_the_link(device: Device, bridge: BridgeSide, batch: list[tuple[str, bytes]]) -> None:
    link = device.link
    before = counts(link)
    for topic, payload in batch:
        bridge.publish(topic, payload)

    # then a good receipt deletes a segment, and a good final replaces its draft in the captions
    depth = device.outbox.depth()
    (sid,) = commit_segments(device.outbox, AGENT, 1)
    segment = make_segment(AGENT, 0, segment_id=sid)
    device.captions.draft(sid, 0, segment.started_at, segment.ended_at, _transcript)
    final = Final(**segment.header(), text="the final", source="cloud", version=2, transcript=_transcript)
    bridge.publish(mqtt_topic(AGENT, Down.RECEIPTS), encode(Receipt(agent_id=AGENT, accepted=[sid], issued_at=NOW)))
    bridge.publish(mqtt_topic(AGENT, Down.CAPTIONS), encode(final))

    want = Counter(expected_outcome(payload) for _, payload in batch) + Counter(receipts=1, finals=1)

    def handled() -> bool:
        got = counts(link) - before
        assert got["downlink_errors"] == 0, "a message raised in the link"
        return all(got[name] == want[name] for name in OUTCOMES)

    wait_until(handled, 30, "every downlink message handled", detail=lambda: f"{counts(link) - before} != {want}")
    wait_until(lambda: device.outbox.depth() == depth, 10, "the receipted segment deleted from the outbox")
    caption = device.captions.get(sid)
    assert caption is not None and caption.is_final and caption.text == "the final"
    assert link.connected.is_set()
    network = link._client._thread  # paho's network thread: a callback's exception would end it
    assert network is not None and network.is_alive()
