"""Agent segments and frames from MQTT into Kafka, acknowledged only once Kafka has them.

Threads:
- paho's network thread of the uplink connection runs :meth:`Uplink.on_message`: it validates,
  waits for a free in-flight slot (back-pressure: while it waits, paho reads nothing more), and
  produces. It alone touches the duplicate window.
- the bridge loop thread runs ``producer.poll()``, so Kafka delivery callbacks
  (:meth:`Uplink._delivered`) run there; they ack MQTT, release the slot and fill receipts.
  ``on_message`` also polls when librdkafka's queue is full, so callbacks take ``_lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.metrics import Metrics
from bridge.mqtt import MqttConnection
from bridge.receipts import ReceiptBook
from bridge.settings import BridgeSettings
from bridge.validation import Refused, check_frame, check_segment, dead_letter, readable_segment_id, topic_route
from contracts import Draft, Frame, Kafka, Receipt, Rejection, Segment, Up, encode, shared_filter

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One MQTT message whose Kafka records are not all confirmed yet."""

    mid: int
    qos: int
    remaining: int
    on_success: Callable[[], None]
    describe: str
    failed: bool = False
    started: float = field(default_factory=time.monotonic)


class Uplink:
    """The persistent, shared, manually acknowledged subscription to every agent's segments and frames."""

    def __init__(self, settings: BridgeSettings, producer: Producer, receipts: ReceiptBook, metrics: Metrics) -> None:
        self.settings = settings
        self.producer = producer
        self.receipts = receipts
        self.metrics = metrics
        self.subscribed = threading.Event()
        self._closing = threading.Event()
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._filters = [shared_filter(settings.shared_group, channel) for channel in (Up.SEGMENTS, Up.FRAMES)]
        self.connection = MqttConnection(
            settings.mqtt,
            settings.client_id,
            metrics,
            persistent=True,
            manual_ack=True,
            receive_maximum=settings.max_in_flight,
            reconnect_s=(settings.reconnect_min_s, settings.reconnect_max_s),
            on_connected=self._subscribe,
            on_disconnected=self._unsubscribed,
        )
        self.connection.client.on_message = self.on_message
        self.connection.client.on_subscribe = self._subscribed

    def start(self) -> None:
        self.connection.start()

    def pause(self) -> None:
        """Take no more messages; those that arrive stay unacknowledged and are redelivered later."""
        self._closing.set()

    def stop(self) -> None:
        self.connection.stop()
        self.subscribed.clear()
        self.metrics.connected.set(0)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # --- paho network thread -------------------------------------------------------------

    def _subscribe(self, client: mqtt.Client) -> None:
        client.subscribe([(f, 1) for f in self._filters])

    def _subscribed(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("subscription to %s refused: %s", self._filters, reasons)
            return
        log.info("subscribed to %s", self._filters)
        self.subscribed.set()
        self.metrics.connected.set(1)

    def _unsubscribed(self) -> None:
        self.subscribed.clear()
        self.metrics.connected.set(0)

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.metrics.received.inc()
        if self._closing.is_set():
            return
        try:
            self._handle(msg)
        except Exception:  # a bug must not stop paho's network thread; the message stays unacked
            self.metrics.errors.inc()
            log.exception("failed to handle message %d on %s; left unacknowledged", msg.mid, msg.topic)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        raw = bytes(msg.payload)
        agent_id: str | None = None
        s = self.settings
        item: Segment | Frame
        try:
            agent_id, channel = topic_route(msg.topic)
            if channel is Up.FRAMES:
                item = check_frame(
                    raw, agent_id, max_bytes=s.max_message_bytes, max_side=s.max_frame_side,
                    max_image_bytes=s.max_frame_bytes,
                )
            else:
                item = check_segment(
                    raw, agent_id, max_bytes=s.max_message_bytes, sample_rates=s.allowed_sample_rates,
                    max_audio_s=s.max_audio_s,
                )
        except Refused as refused:
            self._refuse(msg, raw, agent_id, refused)
            return
        self._note_seen(item.segment_id, agent_id)
        if isinstance(item, Frame):
            records = [(Kafka.FRAMES, raw)]
        else:
            records = [(Kafka.SEGMENTS, raw)]
            if item.draft is not None:
                records.append((Kafka.DRAFTS, encode(Draft.of(item))))

        def accepted() -> None:
            self.receipts.accept(item.agent_id, item.segment_id)

        kind = "frame" if isinstance(item, Frame) else "segment"
        self._forward(msg, agent_id, records, accepted, f"{kind} {item.segment_id} of {agent_id}")

    def _refuse(self, msg: mqtt.MQTTMessage, raw: bytes, agent_id: str | None, refused: Refused) -> None:
        log.warning("refused message on %s: %s (%s)", msg.topic, refused.reason.value, refused.detail)
        self.metrics.dead_lettered.labels(refused.reason.value).inc()
        record = dead_letter(raw, msg.topic, agent_id, refused, self.settings.deadletter_payload_bytes)
        segment_id = readable_segment_id(raw, 16 * self.settings.max_message_bytes)
        rejection = None
        if agent_id is not None and segment_id is not None and _can_receipt(agent_id):
            rejection = Rejection(segment_id=segment_id, reason=refused.reason.value, detail=refused.detail)

        def rejected() -> None:
            if rejection is not None and agent_id is not None:
                self.receipts.reject(agent_id, rejection)

        self._forward(msg, agent_id, [(Kafka.DEADLETTER, encode(record))], rejected, f"dead letter from {msg.topic}")

    def _note_seen(self, segment_id: str, agent_id: str) -> None:
        if segment_id in self._seen:
            self._seen.move_to_end(segment_id)
            self.metrics.duplicates.inc()
            log.info("duplicate segment %s from %s (forwarded again)", segment_id, agent_id)
            return
        self._seen[segment_id] = None
        if len(self._seen) > self.settings.dedup_window:
            self._seen.popitem(last=False)

    def _forward(
        self,
        msg: mqtt.MQTTMessage,
        key: str | None,
        records: list[tuple[Kafka, bytes]],
        on_success: Callable[[], None],
        describe: str,
    ) -> None:
        """Produce ``records``; when Kafka confirmed all of them, ack ``msg`` and run ``on_success``."""
        while not self._slots.acquire(timeout=0.2):
            if self._closing.is_set():
                return
        with self._lock:
            self._in_flight += 1
        self.metrics.in_flight.inc()
        pending = _Pending(msg.mid, msg.qos, len(records), on_success, describe)
        for topic, value in records:
            self._produce(topic, key, value, pending)

    def _produce(self, topic: Kafka, key: str | None, value: bytes, pending: _Pending) -> None:
        started = time.monotonic()

        def delivered(err: KafkaError | None, record: Message) -> None:
            self._delivered(pending, topic, started, err)

        while True:
            try:
                self.producer.produce(topic.value, value=value, key=key, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.05)  # librdkafka's queue is full: serve callbacks, retry
            except KafkaException as exc:
                self._delivered(pending, topic, started, exc.args[0])
                return

    # --- bridge loop thread (delivery callbacks) -----------------------------------------

    def _delivered(self, pending: _Pending, topic: Kafka, started: float, err: KafkaError | None) -> None:
        if err is None:
            self.metrics.produced.labels(topic.value).inc()
            self.metrics.delivery_seconds.observe(time.monotonic() - started)
        else:
            self.metrics.delivery_failures.inc()
            log.error(
                "kafka did not take %s to %s: %s; not acknowledged, it will be resent",
                pending.describe,
                topic.value,
                err,
            )
        with self._lock:
            pending.failed = pending.failed or err is not None
            pending.remaining -= 1
            if pending.remaining:
                return
            self._in_flight -= 1
        self.metrics.in_flight.dec()
        self._slots.release()
        if pending.failed:
            return
        self.connection.client.ack(pending.mid, pending.qos)
        self.metrics.acknowledged.inc()
        pending.on_success()


def _can_receipt(agent_id: str) -> bool:
    """Whether ``agent_id`` is a valid id to address a receipt to."""
    try:
        Receipt(agent_id=agent_id, issued_at=0)
    except ValueError:
        return False
    return True
