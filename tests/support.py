"""What the tests share: waits, sizes, the segment factory, service settings and their environment,
a bare device, and readers of Kafka and /metrics.

The device here is a bare paho client (it publishes what a test gives it and collects receipts and
captions); :mod:`agents_sim` has devices with the real outbox and link, and service processes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import BaseModel, SecretStr

from bridge.settings import BridgeSettings
from contracts import (
    Audio,
    Down,
    Kafka,
    Receipt,
    Segment,
    Status,
    Transcript,
    Up,
    decode,
    encode,
    mqtt_topic,
    new_segment_id,
)
from devtools.brokers import Mosquitto
from edge_agent.outbox import Outbox
from runtime.settings import KafkaSettings, MqttSettings, ServiceSettings

REPO = Path(__file__).resolve().parent.parent
"""The repository root; service processes run from here."""

Record = tuple[bytes | None, bytes]
Number = TypeVar("Number", int, float)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    every_s: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> None:
    """Return once ``check()`` holds; fail after ``timeout_s`` naming ``what`` (and ``detail()``, e.g.
    a service's log, when given)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{more}")
        time.sleep(every_s)


def scale(name: str, default: Number) -> Number:
    """How big or long a proof runs: ``EDGECAP_TEST_<name>`` if set, else ``default`` (the issue's
    size). Turn it down to try a proof in seconds."""
    return type(default)(os.environ.get(f"EDGECAP_TEST_{name}", default))


# --- messages ------------------------------------------------------------------------------------


def make_segment(
    agent_id: str,
    seq: int,
    *,
    segment_id: str | None = None,
    seconds: float = 0.1,
    sample_rate: int = 16000,
    draft: bool | str = True,
    rng: random.Random | None = None,
) -> Segment:
    """A segment of ``seconds`` of 16-bit PCM that ended now. Its edge draft says ``draft`` (a text),
    ``utterance <seq>`` (True) or is absent (False). The audio is a fixed pattern, or bytes drawn
    from ``rng``: as incompressible as speech, for tests that measure the bridge."""
    size = int(seconds * sample_rate) * 2
    pcm = rng.randbytes(size) if rng is not None else (bytes(range(256)) * (size // 256 + 1))[:size]
    now = time.time()
    text = draft if isinstance(draft, str) else f"utterance {seq}"
    return Segment(
        agent_id=agent_id,
        segment_id=segment_id or new_segment_id(),
        seq=seq,
        started_at=now - seconds,
        ended_at=now,
        audio=Audio(sample_rate=sample_rate, data=pcm),
        draft=Transcript(text=text, model_id="test", produced_at=now) if draft is not False else None,
    )


def commit_segments(outbox: Outbox, agent_id: str, n: int, **segment: Any) -> list[str]:
    """Append ``n`` segments of ``agent_id`` (:func:`make_segment` with ``segment``) to ``outbox``,
    as capture does: each takes the outbox's next seq. Their ids, in seq order."""
    ids = [new_segment_id() for _ in range(n)]
    for segment_id in ids:

        def build(seq: int, segment_id: str = segment_id) -> bytes:
            return encode(make_segment(agent_id, seq, segment_id=segment_id, **segment))

        outbox.append(segment_id, mqtt_topic(agent_id, Up.SEGMENTS), build)
    return ids


# --- services ------------------------------------------------------------------------------------


def service_env(settings: ServiceSettings) -> dict[str, str]:
    """The environment variables that give a service process ``settings``: one for each field set
    explicitly (what was left to its default stays so), named with the class's ``env_prefix`` and
    nested groups joined by ``__`` (``EDGECAP_BRIDGE_MQTT__PORT``), lists and dicts as JSON, secrets
    in clear. A nested dict of values becomes settings first: ``service_env(BridgeSettings.load(**values))``,
    so a misspelt name fails here, not in the child."""
    return _group_env(settings, str(settings.model_config.get("env_prefix", "")))


def _group_env(group: BaseModel, prefix: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in sorted(group.model_fields_set):
        value, key = getattr(group, name), f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            env |= _group_env(value, f"{key}__")
        elif value is None:
            raise ValueError(f"{key}: None cannot be given through the environment; leave the field unset")
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, Enum):
            env[key] = str(value.value)
        elif isinstance(value, dict | list | tuple):
            env[key] = json.dumps(value, default=str)
        else:
            env[key] = str(value)
    return env


def bridge_settings(mosquitto: Mosquitto, bootstrap: str, **overrides: Any) -> BridgeSettings:
    """A test bridge's settings (in process, or for a child through :func:`service_env`): its own
    client id, groups and Kafka client id; no downlink; /metrics, if asked for, on the loopback."""
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


class StatusWatcher:
    """Every status ``agent_id`` publishes on a plain loopback broker, in order."""

    def __init__(self, port: int, agent_id: str) -> None:
        self.statuses: list[Status] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(mqtt_topic(agent_id, Up.STATUS), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.statuses.append(decode(bytes(msg.payload), Status))

    def online(self) -> list[Status]:
        """The statuses of the agent while online (not its last will), oldest first."""
        with self.lock:
            return [s for s in self.statuses if s.online]

    def latest(self) -> Status | None:
        online = self.online()
        return online[-1] if online else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Agent:
    """A device as the bridge sees it: a paho v5 client publishing segments, receiving receipts,
    captions and detections."""

    def __init__(self, port: int, agent_id: str) -> None:
        self.agent_id = agent_id
        self.lock = threading.Lock()
        self.receipts: list[Receipt] = []
        self.captions: list[bytes] = []
        self.detections: list[bytes] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique(agent_id), protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(mqtt_topic(agent_id, channel), 1) for channel in (Down.RECEIPTS, Down.CAPTIONS,
                                                                                   Down.DETECTIONS)])  # fmt: skip
        assert subscribed.wait(5)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic.endswith(Down.RECEIPTS.value):
                self.receipts.append(decode(bytes(msg.payload), Receipt))
            elif msg.topic.endswith(Down.DETECTIONS.value):
                self.detections.append(bytes(msg.payload))
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


def produce_segments(bootstrap: str, segments: Iterable[Segment]) -> None:
    """Segments straight into ``edgecap.segments``, keyed by agent as the bridge writes them, and
    confirmed (a test's input to a cloud worker, bypassing the bridge)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for segment in segments:
        producer.produce(Kafka.SEGMENTS, key=segment.agent_id, value=encode(segment))
    assert producer.flush(10) == 0


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


def read_keyed(bootstrap: str, topic: str, key: str, want: int = 1, timeout_s: float = 20) -> list[bytes]:
    """The values keyed ``key`` in ``topic``, in log order, once ``want`` are there (or the timeout)."""
    return keyed(read_topic(bootstrap, topic, lambda r: len(keyed(r, key)) >= want, timeout_s=timeout_s), key)


def segment_seqs(bootstrap: str, agent_id: str, want: int, timeout_s: float = 20) -> list[int]:
    """The ``seq`` of ``agent_id``'s records in ``edgecap.segments``, in Kafka order, once ``want`` are there."""
    return [decode(v, Segment).seq for v in read_keyed(bootstrap, Kafka.SEGMENTS, agent_id, want, timeout_s)]


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


# --- the dashboard -------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def dashboard_user(store: Any, role: str = "admin") -> tuple[str, dict[str, str]]:
    """A new dashboard user of ``role`` in ``store`` (password :data:`PASSWORD`): its name and the
    headers of an API token acting for it."""
    from cloud.dashboard.accounts import Accounts

    accounts = Accounts(store)
    name = unique(role)
    accounts.add_user(name, PASSWORD, role)  # type: ignore[arg-type]
    secret, _ = accounts.new_token(name, "tests")
    return name, {"Authorization": f"Bearer {secret}"}
