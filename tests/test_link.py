"""The agent's MQTT link against a real mosquitto: only a receipt deletes from the outbox.

The test speaks the bridge's side of the protocol itself (subscribe, then send receipts), so it can
withhold receipts, refuse segments, and restart the broker at chosen moments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contracts import (
    Audio,
    Down,
    Final,
    Receipt,
    Rejection,
    Segment,
    Transcript,
    Up,
    decode,
    encode,
    mqtt_filter,
    mqtt_topic,
)
from contracts.settings import MqttSettings
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edgecap.brokers import Mosquitto

pytestmark = pytest.mark.integration


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class FakeBridgePeer:
    """The bridge's side of the MQTT protocol, driven by the test."""

    def __init__(self, port: int) -> None:
        self.received: list[Segment] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(mqtt_filter(Up.SEGMENTS), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append(decode(msg.payload, Segment))

    def send(self, message: Receipt | Final) -> None:
        channel = Down.RECEIPTS if isinstance(message, Receipt) else Down.CAPTIONS
        self.client.publish(mqtt_topic(message.agent_id, channel), encode(message), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def add_segments(box: Outbox, agent_id: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        sid = f"{agent_id}-s{i}"

        def build(seq: int, sid: str = sid) -> bytes:
            return encode(Segment(agent_id=agent_id, segment_id=sid, seq=seq, started_at=1.0, ended_at=2.0,
                                  audio=Audio(sample_rate=16000, data=b"\0\0" * 160)))

        box.append(sid, mqtt_topic(agent_id, Up.SEGMENTS), build)
        ids.append(sid)
    return ids


def test_receipts_delete_and_order_is_kept(tmp_path: Path, mosquitto: Mosquitto) -> None:
    peer = FakeBridgePeer(mosquitto.port)
    box = Outbox(tmp_path / "o.db")
    finals: list[Final] = []
    link = MqttLink("link-a", MqttSettings(port=mosquitto.port), box, on_final=finals.append, resend_after_s=30)
    link.start()
    try:
        ids = add_segments(box, "link-a", 20)
        link.notify()
        assert wait_for(lambda: len(peer.received) >= 20)
        assert [s.seq for s in peer.received[:20]] == list(range(20))
        assert box.depth() == 20  # PUBACKs are not receipts
        peer.send(Receipt(agent_id="link-a", accepted=ids[:15],
                          rejected=[Rejection(segment_id=ids[15], reason="bad_audio")], issued_at=time.time()))
        assert wait_for(lambda: box.depth() == 4)
        assert [e.segment_id for e in box.due(10, 0)] == ids[16:]
        assert link.counters["receipted"] == 15 and link.counters["rejected"] == 1
        t = Transcript(text="final text", model_id="cloud", produced_at=3.0)
        peer.send(Final(agent_id="link-a", segment_id=ids[0], seq=0, started_at=1, ended_at=2, text="final text",
                        source="cloud", version=2, transcript=t))
        assert wait_for(lambda: len(finals) == 1) and finals[0].text == "final text"
    finally:
        link.stop()
        peer.close()


def test_unreceipted_segments_are_resent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    peer = FakeBridgePeer(mosquitto.port)
    box = Outbox(tmp_path / "o.db")
    link = MqttLink("link-b", MqttSettings(port=mosquitto.port), box, on_final=lambda f: None, resend_after_s=0.5)
    link.start()
    try:
        (sid,) = add_segments(box, "link-b", 1)
        link.notify()
        assert wait_for(lambda: sum(s.segment_id == sid for s in peer.received) >= 3)
        assert link.counters["resent"] >= 2
        peer.send(Receipt(agent_id="link-b", accepted=[sid], issued_at=time.time()))
        assert wait_for(lambda: box.depth() == 0)
    finally:
        link.stop()
        peer.close()


def test_broker_restart_then_everything_is_delivered(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        box = Outbox(tmp_path / "o.db")
        # resend_after_s covers the moment between the broker's return and the peer's subscription
        link = MqttLink("link-c", MqttSettings(port=broker.port), box, on_final=lambda f: None, resend_after_s=2)
        link.start()
        try:
            assert link.connected.wait(10)
            broker.kill()
            assert wait_for(lambda: not link.connected.is_set())
            ids = add_segments(box, "link-c", 10)  # captured while the broker is down
            link.notify()
            broker.start()
            peer = FakeBridgePeer(broker.port)
            assert link.connected.wait(40)
            assert wait_for(lambda: {s.segment_id for s in peer.received} >= set(ids), 20)
            peer.send(Receipt(agent_id="link-c", accepted=ids, issued_at=time.time()))
            assert wait_for(lambda: box.depth() == 0)
            peer.close()
        finally:
            link.stop()
