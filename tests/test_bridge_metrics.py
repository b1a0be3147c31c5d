"""The bridge's Prometheus endpoint, scraped over HTTP while real traffic goes through real brokers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.settings import BridgeSettings
from contracts import Audio, Down, Kafka, Receipt, Segment, Transcript, Up, decode, encode, mqtt_topic, new_segment_id
from contracts.settings import KafkaSettings, MqttSettings
from edgecap.brokers import Mosquitto, Tansu, free_port

REPO = Path(__file__).resolve().parent.parent

# --- helpers (also used by test_bridge_retry.py) ---------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_segment(agent_id: str, seq: int, *, sample_rate: int = 16000, draft: bool = True) -> Segment:
    now = time.time()
    return Segment(
        agent_id=agent_id,
        segment_id=new_segment_id(),
        seq=seq,
        started_at=now,
        ended_at=now + 0.1,
        audio=Audio(sample_rate=sample_rate, data=bytes(range(256)) * 12),
        draft=Transcript(text=f"utterance {seq}", model_id="test", produced_at=now) if draft else None,
    )


def bridge_settings(mosquitto: Mosquitto, bootstrap: str, **overrides: Any) -> BridgeSettings:
    name = unique("bridge")
    values: dict[str, Any] = {
        "mqtt": MqttSettings(port=mosquitto.port, session_expiry_s=30),
        "kafka": KafkaSettings(bootstrap_servers=bootstrap, client_id=name),
        "client_id": name,
        "shared_group": name,
        "downlink": False,
        "metrics_host": "127.0.0.1",
    }
    return BridgeSettings.load(**(values | overrides))


class Agent:
    """A device as the bridge sees it: publishes segments, collects its receipts."""

    def __init__(self, port: int, agent_id: str) -> None:
        self.agent_id = agent_id
        self.lock = threading.Lock()
        self.receipts: list[Receipt] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique(agent_id), protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(mqtt_topic(agent_id, Down.RECEIPTS), 1)
        assert subscribed.wait(5)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.receipts.append(decode(msg.payload, Receipt))

    def publish(self, payload: bytes) -> None:
        self.client.publish(mqtt_topic(self.agent_id, Up.SEGMENTS), payload, qos=1).wait_for_publish(10)

    def accepted(self) -> list[str]:
        with self.lock:
            return [sid for r in self.receipts for sid in r.accepted]

    def rejected(self) -> dict[str, str]:
        with self.lock:
            return {rej.segment_id: rej.reason for r in self.receipts for rej in r.rejected}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """Every sample of ``/metrics`` as ``name{label="value"} -> number`` (labels sorted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def segment_seqs(bootstrap: str, agent_id: str, want: int, timeout_s: float = 20) -> list[int]:
    """The ``seq`` of ``agent_id``'s records in ``edgecap.segments``, in Kafka order, once ``want`` are there."""
    topic = Kafka.SEGMENTS.value
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False})
    seqs: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions: list[int] = []
        while not partitions and time.monotonic() < deadline:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            partitions = list(meta.partitions) if meta is not None and not meta.error else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while len(seqs) < want and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=0.2):
                if not m.error() and m.key() == agent_id.encode():
                    seqs.append(decode(m.value() or b"", Segment).seq)
    finally:
        consumer.close()
    return seqs


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
    assert m[P + 'produced_total{topic="edgecap.drafts"}'] == 3  # segments 0, 1 and the resend of 0
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
    assert m[P + "delivery_seconds_count"] == 10 and m[P + 'delivery_seconds_bucket{le="+Inf"}'] == 10
    assert 0 < m[P + "delivery_seconds_sum"] < 10
    assert m[P + "retried_total"] == 0 and m[P + "delivery_failures_total"] == 0
    assert m[P + "producer_restarts_total"] == 0 and m[P + "errors_total"] == 0
    with pytest.raises(OSError):  # the endpoint is gone once the bridge stopped
        scrape(port)



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
