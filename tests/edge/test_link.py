"""The agent's MQTT link against a real mosquitto: only a receipt deletes from the outbox.

The test speaks the bridge's side of the protocol itself (subscribe, then send receipts), so it can
withhold receipts, refuse segments, and restart the broker at chosen moments.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support import commit_segments, wait_until

from contracts import (
    Down,
    Final,
    Receipt,
    Rejection,
    Segment,
    Status,
    Transcript,
    Up,
    decode,
    encode,
    mqtt_filter,
    mqtt_topic,
)
from devtools.brokers import Mosquitto
from edge_agent.health import Health
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from runtime.settings import MqttSettings

pytestmark = pytest.mark.integration


class FakeBridgePeer:
    """The bridge's side of the MQTT protocol, driven by the test; with ``statuses``, it also reads
    the agents' status messages, which come on its one connection in the order they were sent."""

    def __init__(self, port: int, auto_receipt: bool = False, statuses: bool = False) -> None:
        self.auto_receipt = auto_receipt
        self.received: list[Segment] = []
        self.statuses: list[Status] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        channels = [Up.SEGMENTS, Up.STATUS] if statuses else [Up.SEGMENTS]
        self.client.subscribe([(mqtt_filter(channel), 1) for channel in channels])
        self.client.loop_start()
        assert subscribed.wait(10), "the peer's subscription was not acknowledged"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith(Up.STATUS.value):
            with self.lock:
                self.statuses.append(decode(bytes(msg.payload), Status))
            return
        segment = decode(msg.payload, Segment)
        with self.lock:
            self.received.append(segment)
        if self.auto_receipt:  # like the bridge: every segment receipted
            receipt = Receipt(agent_id=segment.agent_id, accepted=[segment.segment_id], issued_at=time.time())
            self.client.publish(mqtt_topic(segment.agent_id, Down.RECEIPTS), encode(receipt), qos=1)

    def send(self, message: Receipt | Final) -> None:
        channel = Down.RECEIPTS if isinstance(message, Receipt) else Down.CAPTIONS
        self.client.publish(mqtt_topic(message.agent_id, channel), encode(message), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_receipts_delete_and_order_is_kept(tmp_path: Path, mosquitto: Mosquitto) -> None:
    peer = FakeBridgePeer(mosquitto.port, statuses=True)
    box = Outbox(tmp_path / "o.db")
    finals: list[Final] = []
    link = MqttLink("link-a", MqttSettings(port=mosquitto.port), box, on_final=finals.append, resend_after_s=30)
    ids = commit_segments(box, "link-a", 20)  # waiting before the connect: else the probe may find none
    link.start()
    try:
        link.notify()
        wait_until(lambda: len(peer.received) >= 1, 10, "the first segment")
        # a status sent now arrives after anything the link published before it
        def statuses() -> int:
            return sum(s.agent_id == "link-a" for s in peer.statuses)

        before = statuses()
        link.publish_status()
        wait_until(lambda: statuses() > before, 10, "the status published after the first segment")
        assert len(peer.received) == 1  # after a connect, the oldest goes alone until its receipt proves the way
        assert link.counters["published"] == 1
        peer.send(Receipt(agent_id="link-a", accepted=ids[:1], issued_at=time.time()))
        wait_until(lambda: len(peer.received) >= 20, 10, "the other 19 segments")
        assert [s.seq for s in peer.received[:20]] == list(range(20))
        assert box.depth() == 19  # PUBACKs are not receipts
        peer.send(Receipt(agent_id="link-a", accepted=ids[1:15],
                          rejected=[Rejection(segment_id=ids[15], reason="bad_audio")], issued_at=time.time()))
        wait_until(lambda: box.depth() == 4, 10, "15 receipted segments deleted and 1 rejected quarantined")
        assert [e.segment_id for e in box.due(10, 0)] == ids[16:]
        assert [(q.segment_id, q.reason) for q in box.quarantined()] == [(ids[15], "bad_audio")]  # kept, not sent
        assert link.counters["receipted"] == 15 and link.counters["rejected"] == 1
        assert link.counters["published"] == 20 and link.counters["resent"] == 0
        t = Transcript(text="final text", model_id="cloud", produced_at=3.0)
        peer.send(Final(agent_id="link-a", segment_id=ids[0], seq=0, started_at=1, ended_at=2, text="final text",
                        source="cloud", version=2, transcript=t))
        wait_until(lambda: len(finals) == 1, 10, "the final")
        assert finals[0].text == "final text"
    finally:
        link.stop()
        peer.close()


def test_unreceipted_segments_are_resent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    peer = FakeBridgePeer(mosquitto.port)
    box = Outbox(tmp_path / "o.db")
    link = MqttLink("link-b", MqttSettings(port=mosquitto.port), box, on_final=lambda f: None, resend_after_s=0.5)
    link.start()
    try:
        (sid,) = commit_segments(box, "link-b", 1)
        link.notify()
        wait_until(lambda: sum(s.segment_id == sid for s in peer.received) >= 3, 10, "two resends")
        assert link.counters["resent"] >= 2
        peer.send(Receipt(agent_id="link-b", accepted=[sid], issued_at=time.time()))
        wait_until(lambda: box.depth() == 0, 10, "the receipted segment deleted")
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
            wait_until(lambda: not link.connected.is_set(), 10, "the link to notice")
            ids = commit_segments(box, "link-c", 10)  # captured while the broker is down
            link.notify()
            broker.start()
            peer = FakeBridgePeer(broker.port, auto_receipt=True)
            assert link.connected.wait(40)
            wait_until(lambda: {s.segment_id for s in peer.received} >= set(ids), 20, "every segment")
            wait_until(lambda: box.depth() == 0, 10, "every receipt")
            first = list(dict.fromkeys(s.segment_id for s in peer.received))
            assert first == ids  # first arrivals in seq order
            peer.close()
        finally:
            link.stop()


def test_unreceipted_segments_back_off_exponentially_up_to_the_cap(tmp_path: Path, mosquitto: Mosquitto) -> None:
    peer = FakeBridgePeer(mosquitto.port)
    box = Outbox(tmp_path / "o.db")
    link = MqttLink("link-d", MqttSettings(port=mosquitto.port), box, on_final=lambda f: None,
                    resend_after_s=0.4, resend_max_s=1.0)
    arrivals: list[float] = []
    peer.client.on_message = lambda _c, _u, msg: arrivals.append(time.monotonic())
    link.start()
    try:
        assert link.connected.wait(10)
        (sid,) = commit_segments(box, "link-d", 1)
        link.notify()
        wait_until(lambda: len(arrivals) >= 5, 10, "four resends")
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)][:4]
        # nominal 0.4, 0.8, then the 1.0 cap; jitter ±20 %, plus a little delivery slack
        assert 0.3 <= gaps[0] <= 0.6, gaps
        assert 0.6 <= gaps[1] <= 1.1, gaps
        assert all(0.75 <= g <= 1.35 for g in gaps[2:]), gaps
        assert link.counters["published"] == 1 and link.counters["resent"] >= 4
        peer.send(Receipt(agent_id="link-d", accepted=[sid], issued_at=time.time()))
        wait_until(lambda: box.depth() == 0, 10, "the receipted segment deleted")
        assert link.counters["receipts"] == 1 and link.counters["receipted"] == 1
    finally:
        link.stop()
        peer.close()


def test_retained_status_is_the_heartbeat(tmp_path: Path, mosquitto: Mosquitto) -> None:
    statuses: list[Status] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda _c, _u, msg: statuses.append(decode(msg.payload, Status))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(mqtt_topic("link-e", Up.STATUS), qos=1)
    watcher.loop_start()
    box = Outbox(tmp_path / "o.db")
    health = Health()
    input_done = threading.Event()
    link = MqttLink(
        "link-e", MqttSettings(port=mosquitto.port), box, on_final=lambda f: None, health=health,
        input_done=input_done.is_set,
    )
    link.start()
    try:
        assert link.connected.wait(10)
        commit_segments(box, "link-e", 3)
        health.record_inference(audio_s=2.0, compute_s=0.1)
        health.record_inference(audio_s=2.0, compute_s=0.3)
        sum(i * i for i in range(300_000))  # some CPU to measure
        link.publish_status()
        wait_until(lambda: any(s.online and s.asr_rtf is not None for s in statuses), 10, "the status with health")
        status = [s for s in statuses if s.asr_rtf is not None][-1]
        assert status.queue_depth == 3 and status.oldest_age_s >= 0
        assert status.asr_rtf == pytest.approx(0.1)
        assert status.rss_mb is not None and 20 < status.rss_mb < 4096
        assert status.cpu_percent is not None and status.cpu_percent > 0
        assert status.uptime_s is not None and status.quota_full is False and status.dropped_segments == 0
        assert not status.input_done
        input_done.set()  # the agent's input ended and is all captioned: the next status says so
        link.publish_status()
        wait_until(lambda: statuses[-1].input_done, 10, "the status saying the input is done")
    finally:
        link.stop()
    wait_until(lambda: not statuses[-1].online, 10, "the last word: offline, retained")
    watcher.loop_stop()
    watcher.disconnect()


def test_detections_the_device_asked_for_are_handed_over(tmp_path: Path) -> None:
    """The link's message handling without a broker: its own detections reach the callback, another
    device's are a bad downlink, and a callback that fails is counted, never raised into paho."""
    from contracts import Detection, Detections, Down, encode, mqtt_topic

    got: list[Detections] = []
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink("pi-1", MqttSettings(port=1), outbox, on_final=lambda _f: None, on_detections=got.append)

    def found(agent_id: str) -> Detections:
        cat = Detection(label="cat", class_id=15, score=0.9, x1=1, y1=2, x2=30, y2=40)
        return Detections(agent_id=agent_id, segment_id="f1", seq=1, captured_at=time.time(), width=64, height=48,
                          boxes=[cat], model_id="m", worker="w", detected_at=time.time(), summary=True)  # fmt: skip

    def deliver(payload: bytes) -> None:
        msg = mqtt.MQTTMessage(topic=mqtt_topic("pi-1", Down.DETECTIONS).encode())
        msg.payload = payload
        link._on_message(None, None, msg)

    try:
        deliver(encode(found("pi-1")))
        deliver(encode(found("pi-2")))
        assert [d.agent_id for d in got] == ["pi-1"]
        assert link.counters["detections"] == 1 and link.counters["bad_downlink"] == 1

        def failing(_found: Detections) -> None:
            raise RuntimeError("a bug in the receiver")

        link.on_detections = failing
        deliver(encode(found("pi-1")))
        assert link.counters["downlink_errors"] == 1
    finally:
        outbox.close()
