"""What the bridge's tests share: a fake device, segments, settings, and readers of Kafka and /metrics.

The device here is a bare paho client (it publishes what a test gives it and collects receipts and
captions); :mod:`agents_sim` has devices with the real outbox and link, and service processes.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bridge.settings import BridgeSettings
from contracts import Audio, Down, Kafka, Receipt, Segment, Transcript, Up, decode, mqtt_topic, new_segment_id
from devtools.brokers import Mosquitto
from runtime.settings import KafkaSettings, MqttSettings

Record = tuple[bytes | None, bytes]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def make_segment(
    agent_id: str, seq: int, *, seconds: float = 0.1, sample_rate: int = 16000, draft: bool = True
) -> Segment:
    samples = int(seconds * sample_rate)
    pcm = (bytes(range(256)) * (samples * 2 // 256 + 1))[: samples * 2]
    now = time.time()
    return Segment(
        agent_id=agent_id,
        segment_id=new_segment_id(),
        seq=seq,
        started_at=now,
        ended_at=now + seconds,
        audio=Audio(sample_rate=sample_rate, data=pcm),
        draft=Transcript(text=f"utterance {seq}", model_id="test", produced_at=now) if draft else None,
    )


def bridge_settings(mosquitto: Mosquitto, bootstrap: str, **overrides: Any) -> BridgeSettings:
    """An in-process bridge's settings: its own client id, groups and Kafka client id; no downlink."""
    name = unique("bridge")
    values: dict[str, Any] = {
        "mqtt": MqttSettings(port=mosquitto.port, session_expiry_s=30),
        "kafka": KafkaSettings(bootstrap_servers=bootstrap, client_id=name),
        "client_id": name,
        "shared_group": name,
        "downlink": False,
        "downlink_group": name,
        "metrics_host": "127.0.0.1",
    }
    return BridgeSettings.load(**(values | overrides))


class Agent:
    """A device as the bridge sees it: a paho v5 client publishing segments, receiving receipts and
    captions."""

    def __init__(self, port: int, agent_id: str) -> None:
        self.agent_id = agent_id
        self.lock = threading.Lock()
        self.receipts: list[Receipt] = []
        self.captions: list[bytes] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique(agent_id), protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(mqtt_topic(agent_id, Down.RECEIPTS), 1), (mqtt_topic(agent_id, Down.CAPTIONS), 1)])
        assert subscribed.wait(5)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic.endswith(Down.RECEIPTS.value):
                self.receipts.append(decode(msg.payload, Receipt))
            else:
                self.captions.append(bytes(msg.payload))

    def publish(self, payload: bytes, topic: str | None = None) -> None:
        info = self.client.publish(topic or mqtt_topic(self.agent_id, Up.SEGMENTS), payload, qos=1)
        info.wait_for_publish(10)

    def accepted(self) -> list[str]:
        """Accepted segment ids in receipt order (an id receipted twice is listed twice)."""
        with self.lock:
            return [sid for r in self.receipts for sid in r.accepted]

    def rejected(self) -> dict[str, str]:
        with self.lock:
            return {rej.segment_id: rej.reason for r in self.receipts for rej in r.rejected}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- Kafka ---------------------------------------------------------------------------------------


def read_topic(
    bootstrap: str, topic: str, done: Callable[[list[Record]], bool], *, timeout_s: float = 20, linger_s: float = 0.0
) -> list[Record]:
    """Every record (key, value) of ``topic`` from the beginning, in log order per partition, until
    ``done(records)`` holds (and, with ``linger_s``, nothing more came for that long: late
    duplicates), or the timeout."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique("reader"),
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
    })
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions: list[int] = []
        while not partitions and time.monotonic() < deadline:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            partitions = list(meta.partitions) if meta is not None and not meta.error else []
            if not partitions:
                time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, timeout=0.2) if not m.error()]
            records.extend((m.key(), m.value() or b"") for m in batch)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= linger_s and done(records):
                break
    finally:
        consumer.close()
    return records


def keyed(records: list[Record], agent_id: str) -> list[bytes]:
    """The values of the records keyed by ``agent_id``."""
    return [v for k, v in records if k == agent_id.encode()]


def segment_seqs(bootstrap: str, agent_id: str, want: int, timeout_s: float = 20) -> list[int]:
    """The ``seq`` of ``agent_id``'s records in ``edgecap.segments``, in Kafka order, once ``want`` are there."""
    records = read_topic(
        bootstrap, Kafka.SEGMENTS.value, lambda r: len(keyed(r, agent_id)) >= want, timeout_s=timeout_s
    )
    return [decode(v, Segment).seq for v in keyed(records, agent_id)]


# --- /metrics ------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """A Prometheus endpoint's samples by full name, labels included as exposed (``name{a="x"}``);
    {} if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
