"""Agent statuses (heartbeats and last wills) through the bridge to ``edgecap.status``, against real
mosquitto and a real Kafka-protocol broker: checked, forwarded without a receipt, acknowledged, and
counted apart from the segments and frames.

The bridges here subscribe to every agent's status on a broker the whole session shares, so their
status counters may also see other tests' agents: the checks on those counters are lower bounds,
and what each test's own agent sent is checked exactly in Kafka (records keyed by its unique id).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support import Agent, bridge_settings, commit_segments, make_segment, read_keyed, unique, wait_until

from bridge.app import Bridge
from contracts import DeadLetter, Kafka, Status, Up, decode, encode, mqtt_topic
from devtools.brokers import Mosquitto, Tansu
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from runtime.settings import MqttSettings


@pytest.fixture
def agent(mosquitto: Mosquitto) -> Iterator[Agent]:
    a = Agent(mosquitto.port, unique("pi-s"))
    yield a
    a.close()


def _segment_counts(stats: dict[str, object]) -> dict[str, object]:
    return {k: stats[k] for k in ("received", "acknowledged", "produced", "dead_lettered", "in_flight")}


@pytest.mark.integration
def test_statuses_and_last_wills_go_to_kafka(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    """An agent's heartbeat (retained, as agents send it) and, when it vanishes, its last will reach
    edgecap.status keyed by the agent; a status naming another agent, one that is not JSON and one
    over max_status_bytes are refused with their reasons and dead-lettered. No receipt for any, and
    none counts among the segments' messages."""
    topic = mqtt_topic(agent.agent_id, Up.STATUS)
    beat = Status(agent_id=agent.agent_id, online=True, at=time.time(), queue_depth=2, site="lab")
    will = Status(agent_id=agent.agent_id, online=False, at=time.time() + 1)
    bad = {  # reason -> payload
        "spoofed_agent": encode(Status(agent_id=unique("someone-else"), online=False, at=time.time())),
        "bad_json": b'{"schema": "edgecap.status.v1", "agent_id": ',
        "too_large": encode(beat) + b" " * 1024,
    }
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, max_status_bytes=1024)) as bridge:
        assert bridge.wait_ready(10)
        agent.client.publish(topic, encode(beat), qos=1, retain=True).wait_for_publish(10)
        for raw in bad.values():
            agent.publish(raw, topic)
        ghost = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("ghost"), protocol=mqtt.MQTTv5)
        ghost.will_set(topic, encode(will), qos=1, retain=True)
        ghost.connect("127.0.0.1", mosquitto.port)
        ghost.loop_start()
        try:
            wait_until(ghost.is_connected, 10, "the ghost's connection")
            ghost._sock.close()  # type: ignore[union-attr] # vanishes without DISCONNECT: the broker sends its will
            records = read_keyed(kafka.bootstrap, Kafka.STATUS, agent.agent_id, 2, 30)
        finally:
            ghost.loop_stop()
        letters = read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent.agent_id, len(bad), 30)
        wait_until(lambda: bridge.stats()["statuses_forwarded"] >= 2, 10, "the confirmations")
        stats = bridge.stats()
    assert [decode(r, Status) for r in records] == [beat, will]
    dead = [decode(r, DeadLetter) for r in letters]
    assert {d.reason.value: d.payload for d in dead} == bad
    assert all(d.source == topic and d.agent_id == agent.agent_id and not d.truncated for d in dead)
    assert all(stats["statuses_refused"].get(reason, 0) >= 1 for reason in bad), stats["statuses_refused"]
    assert stats["statuses_received"] >= 2 + len(bad)
    assert _segment_counts(stats) == {
        "received": 0, "acknowledged": 0, "produced": {}, "dead_lettered": {}, "in_flight": 0,
    }  # fmt: skip
    assert stats["errors"] == 0
    assert agent.receipts == []


@pytest.mark.integration
def test_statuses_between_segments_are_acknowledged_and_counted_apart(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent
) -> None:
    """Statuses interleaved with segments: the segments are forwarded, acknowledged, receipted and
    counted as ever, by themselves; each status reaches Kafka once and is acknowledged too: a bridge
    back on the same persistent session is handed none of them again (it would be redelivered
    before the segment sent after)."""
    settings = bridge_settings(mosquitto, kafka.bootstrap)
    topic = mqtt_topic(agent.agent_id, Up.STATUS)
    segments = [make_segment(agent.agent_id, seq) for seq in range(3)]
    statuses = [Status(agent_id=agent.agent_id, online=True, at=time.time() + i, queue_depth=3 - i) for i in range(3)]
    with Bridge(settings) as bridge:
        assert bridge.wait_ready(10)
        for segment, status in zip(segments, statuses, strict=True):
            agent.publish(encode(segment))
            agent.publish(encode(status), topic)
        wait_until(lambda: len(agent.accepted()) == len(segments), 15, "the receipts")
        read_keyed(kafka.bootstrap, Kafka.STATUS, agent.agent_id, len(statuses), 30)  # all taken by this bridge
        stats = bridge.stats()
    assert _segment_counts(stats) == {
        "received": 3, "acknowledged": 3, "produced": {Kafka.SEGMENTS.value: 3}, "dead_lettered": {}, "in_flight": 0,
    }  # fmt: skip
    assert stats["delivery_seconds_count"] == 3 and stats["statuses_received"] >= 3
    assert sorted(agent.accepted()) == sorted(s.segment_id for s in segments)

    after = make_segment(agent.agent_id, 3)
    with Bridge(settings) as again:  # the same client id: the same session
        assert again.wait_ready(10)
        agent.publish(encode(after))
        wait_until(lambda: after.segment_id in agent.accepted(), 15, "the receipt of the segment sent after")
        assert again.stats()["received"] == 1  # no segment redelivered either
    # both bridges flushed their producers when they stopped: every status forwarded is in Kafka
    records = read_keyed(kafka.bootstrap, Kafka.STATUS, agent.agent_id, len(statuses), 30)
    assert [decode(r, Status) for r in records] == statuses


@pytest.mark.integration
def test_two_replicas_forward_each_status_once(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    """Two bridge replicas in one shared-subscription group: each status goes through one of them,
    both take a share, and Kafka has each status once."""
    group = unique("bridges")
    replicas = [bridge_settings(mosquitto, kafka.bootstrap, shared_group=group) for _ in range(2)]
    topic = mqtt_topic(agent.agent_id, Up.STATUS)
    statuses = [Status(agent_id=agent.agent_id, online=True, at=time.time() + i) for i in range(10)]
    with Bridge(replicas[0]) as one, Bridge(replicas[1]) as two:
        assert one.wait_ready(10) and two.wait_ready(10)
        for status in statuses:
            agent.publish(encode(status), topic)
        records = read_keyed(kafka.bootstrap, Kafka.STATUS, agent.agent_id, len(statuses), 30)
        shares = [b.stats()["statuses_received"] for b in (one, two)]
    assert sorted(decode(r, Status).at for r in records) == [s.at for s in statuses]
    assert all(share >= 1 for share in shares), shares


@pytest.mark.integration
def test_an_agents_own_statuses_reach_kafka(mosquitto: Mosquitto, kafka: Tansu, tmp_path: Path) -> None:
    """The edge agent's MQTT link as it runs on a device: its status on connecting (online) and on
    stopping (offline) reach edgecap.status through the bridge, beside its segments, which alone
    count as received."""
    agent_id = unique("pi-link")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink(agent_id, MqttSettings(port=mosquitto.port, session_expiry_s=30), outbox, on_final=lambda _f: None)
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap)) as bridge:
        assert bridge.wait_ready(10)
        link.start()
        try:
            assert link.connected.wait(10), "the link could not connect"
            commit_segments(outbox, agent_id, 2)
            link.notify()
            wait_until(lambda: outbox.depth() == 0, 15, "the receipts of both segments")
        finally:
            link.stop()
        records = [decode(r, Status) for r in read_keyed(kafka.bootstrap, Kafka.STATUS, agent_id, 2, 30)]
        stats = bridge.stats()
    outbox.close()
    assert records[0].online and not records[-1].online
    assert all(r.agent_id == agent_id for r in records)
    assert stats["received"] == 2 and stats["acknowledged"] == 2
