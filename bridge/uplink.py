"""Agent segments and frames from MQTT into Kafka, acknowledged only once Kafka has them (agent
statuses have a subscription of their own: :mod:`bridge.statuses`).

Threads:
- paho's network thread of the uplink connection runs :meth:`Uplink.on_message`: it validates,
  waits for a free in-flight slot (back-pressure: while it waits, paho reads nothing more) and
  hands the records to :class:`~bridge.delivery.Delivery`, which also holds it while a retry round
  runs. It alone touches the duplicate window.
- the bridge loop thread serves Kafka's delivery callbacks (:meth:`Uplink._confirmed` marks a
  message whose records are all confirmed), then :meth:`Uplink.ack_confirmed` acks MQTT in arrival
  order (PUBACKs go out in the order the PUBLISHes came, as MQTT asks), frees the slots and fills
  receipts. ``_lock`` guards the ack queue. When Kafka refuses a record for good, the loop thread
  also runs :meth:`Uplink._kafka_refused`: the message is dead-lettered and rejected instead.

A record over the Kafka limit (``kafka_max_record_bytes``) is never produced: its message is refused
as ``too_large`` before, like any other refused input.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from bridge.delivery import Delivery, Records
from bridge.limits import fitted_dead_letter, record_bytes
from bridge.metrics import Metrics
from bridge.mqtt import Subscription
from bridge.receipts import ReceiptBook
from bridge.settings import BridgeSettings
from bridge.validation import Refused, check_frame, check_segment, readable_segment_id, topic_route
from contracts import Frame, Kafka, Reason, Rejection, Segment, Up, shared_filter
from contracts.ids import is_agent_id

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    """One MQTT message waiting for Kafka's confirmation of all its records, then for its ack."""

    mid: int
    qos: int
    on_success: Callable[[], None]
    confirmed: bool = False


@dataclass(eq=False)
class _Refusal:
    """What the dead letter of one MQTT message says, should it be (or become) refused."""

    source: str  # the MQTT topic
    agent_id: str | None
    segment_id: str | None  # for the agent's receipt, when one can be read
    raw: bytes  # the payload as it came (also the record's value while in flight: no copy)
    reason: Reason | None = None
    detail: str = ""
    described: bool = False  # its dead letter went without payload, as the payload made it too large


class Uplink:
    """The persistent, shared, manually acknowledged subscription to every agent's segments and frames."""

    def __init__(self, settings: BridgeSettings, delivery: Delivery, receipts: ReceiptBook, metrics: Metrics) -> None:
        self.settings = settings
        self.delivery = delivery
        self.receipts = receipts
        self.metrics = metrics
        self._closing = threading.Event()
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._lock = threading.Lock()
        self._unacked: deque[_Pending] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._last_seq: OrderedDict[str, int] = OrderedDict()  # highest seq seen per agent, recent agents
        self.subscription = Subscription(
            settings.mqtt,
            settings.client_id,
            [shared_filter(settings.shared_group, channel) for channel in (Up.SEGMENTS, Up.FRAMES)],
            metrics,
            metrics.connected,
            self.on_message,
            receive_maximum=settings.max_in_flight,  # the broker sends no more than the slots
            reconnect_s=(settings.reconnect_min_s, settings.reconnect_max_s),
        )
        self.subscribed = self.subscription.subscribed

    def start(self) -> None:
        self.subscription.start()

    def pause(self) -> None:
        """Take no more messages; those that arrive stay unacknowledged and are redelivered later."""
        self._closing.set()

    def stop(self) -> None:
        self.subscription.stop()

    def in_flight(self) -> int:
        """Messages taken from MQTT and not acknowledged yet."""
        with self._lock:
            return len(self._unacked)

    # --- paho network thread -------------------------------------------------------------

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
        except Exception as exc:  # a bug in a check: refuse the message rather than leave it unacked
            self.metrics.errors.inc()
            log.exception("checking a message on %s failed; it is dead-lettered", msg.topic)
            self._refuse(msg, raw, agent_id, Refused(Reason.INVALID, f"the bridge could not check it: {exc!r}"[:300]))
            return
        kind = "frame" if isinstance(item, Frame) else "segment"
        size = record_bytes(agent_id, raw)
        if size > s.kafka_max_record_bytes:  # never produced: Kafka (or its client) would refuse it
            segment_id = item.segment_id
            del item
            self._refuse(msg, raw, agent_id, Refused(
                Reason.TOO_LARGE,
                f"{kind}: its Kafka record would be {size} bytes, over the limit of {s.kafka_max_record_bytes}",
            ), segment_id)
            return
        self._note_seen(item.segment_id, agent_id, item.seq)
        # one record, the bytes as they came: the reconciler takes each segment's draft from
        # edgecap.segments itself (the bridge moves and checks, it does not reshape)
        records: list[tuple[Kafka, str | None, bytes]] = [
            (Kafka.FRAMES if isinstance(item, Frame) else Kafka.SEGMENTS, agent_id, raw)
        ]

        segment_id = item.segment_id  # the closure keeps the id, not the decoded audio, while in flight

        def accepted() -> None:
            self.receipts.accept(agent_id, segment_id)

        del item
        refusal = _Refusal(msg.topic, agent_id, segment_id, raw)
        self._forward(msg, records, accepted, f"{kind} {segment_id} of {agent_id}", refusal)

    def _refuse(
        self, msg: mqtt.MQTTMessage, raw: bytes, agent_id: str | None, refused: Refused, segment_id: str | None = None
    ) -> None:
        log.warning("refused message on %s: %s (%s)", msg.topic, refused.reason.value, refused.detail)
        self.metrics.dead_lettered.labels(refused.reason.value).inc()
        if segment_id is None:
            segment_id = readable_segment_id(raw, 16 * self.settings.max_message_bytes)
        refusal = _Refusal(msg.topic, agent_id, segment_id, raw, refused.reason, refused.detail)
        letter = self._dead_letter(refusal, self.settings.deadletter_payload_bytes)
        self._forward(msg, letter, self._rejecter(refusal), f"dead letter from {msg.topic}", refusal)

    def _dead_letter(self, refusal: _Refusal, keep: int) -> Records:
        """The dead-letter record of ``refusal``'s message, with at most ``keep`` bytes of its payload
        and never over the Kafka record limit."""
        assert refusal.reason is not None
        letter = fitted_dead_letter(
            refusal.raw, refusal.source, refusal.agent_id, refusal.reason, refusal.detail, keep,
            self.settings.kafka_max_record_bytes,
        )
        return [(Kafka.DEADLETTER, refusal.agent_id, letter)]

    def _rejecter(self, refusal: _Refusal) -> Callable[[], None]:
        """What puts ``refusal`` in its agent's next receipt (nothing, without an id to name)."""
        agent_id, segment_id, reason = refusal.agent_id, refusal.segment_id, refusal.reason
        if agent_id is None or segment_id is None or reason is None or not is_agent_id(agent_id):
            return lambda: None
        rejection = Rejection(segment_id=segment_id, reason=reason, detail=refusal.detail)
        return lambda: self.receipts.reject(agent_id, rejection)

    def _note_seen(self, segment_id: str, agent_id: str, seq: int) -> None:
        """Count replays (an id seen within the window) and sequence regressions (a new id whose seq
        is not above the highest this replica saw from the agent: a resend this replica never saw,
        after a failover, or a device whose outbox was reset). Both are forwarded: the store keeps
        one row per id, and refusing a valid segment would lose it."""
        if segment_id in self._seen:
            self._seen.move_to_end(segment_id)
            self.metrics.duplicates.inc()
            log.debug("duplicate segment %s from %s (forwarded again)", segment_id, agent_id)
            return
        self._seen[segment_id] = None
        if len(self._seen) > self.settings.dedup_window:
            self._seen.popitem(last=False)
        last = self._last_seq.get(agent_id)
        if last is not None and seq <= last:
            self.metrics.seq_regressions.inc()
            log.debug("seq regression from %s: %s has seq %d, %d seen before (forwarded)", agent_id, segment_id,
                      seq, last)
            return
        self._last_seq[agent_id] = seq
        self._last_seq.move_to_end(agent_id)
        if len(self._last_seq) > self.settings.dedup_window:
            self._last_seq.popitem(last=False)

    def _forward(
        self, msg: mqtt.MQTTMessage, records: Records, on_success: Callable[[], None], describe: str, refusal: _Refusal
    ) -> None:
        """Produce ``records`` (topic, key, value); once Kafka confirmed them all, ack ``msg`` and
        run ``on_success`` (or, if Kafka refused a record for good, once it confirmed the dead letter,
        ack ``msg`` and reject it: :meth:`_kafka_refused`)."""
        while not self._slots.acquire(timeout=0.2):
            if self._closing.is_set():
                return
        pending = _Pending(msg.mid, msg.qos, on_success)
        with self._lock:
            self._unacked.append(pending)
        self.metrics.in_flight.inc()

        def refused(topic: Kafka, value: bytes, reason: Reason, detail: str) -> Records:
            return self._kafka_refused(pending, refusal, topic, reason, detail)

        if not self.delivery.send(records, lambda: self._confirmed(pending), describe, self._closing, refused):
            with self._lock:  # closing: never sent, never acked; the broker redelivers it later
                self._unacked.remove(pending)
            self.metrics.in_flight.dec()
            self._slots.release()

    # --- bridge loop thread (delivery callbacks) -----------------------------------------

    def _kafka_refused(
        self, pending: _Pending, refusal: _Refusal, topic: Kafka, reason: Reason, detail: str
    ) -> Records:
        """Kafka refused a record of ``pending``'s message for good: what to produce instead. A segment
        or frame is dead-lettered and rejected in its agent's receipt, like input the bridge refuses
        itself; a dead letter refused as too large goes again without its payload; one refused
        anyway is counted and logged, and the message is still acknowledged and rejected: holding it
        would stall its agent behind a record that can never be written."""
        if topic is not Kafka.DEADLETTER:
            refusal.reason, refusal.detail = reason, detail
            self.metrics.dead_lettered.labels(reason.value).inc()
            pending.on_success = self._rejecter(refusal)
            return self._dead_letter(refusal, self.settings.deadletter_payload_bytes)
        if reason is Reason.TOO_LARGE and not refusal.described:
            refusal.described = True
            log.warning("the dead letter from %s is too large for kafka: sending it without payload", refusal.source)
            return self._dead_letter(refusal, 0)
        self.metrics.deadletters_lost.inc()
        log.error("kafka refused the dead letter from %s for good (%s), the message is still rejected: %s",
                  refusal.source, refusal.reason, detail)
        return []

    def _confirmed(self, pending: _Pending) -> None:
        """Kafka has every record of ``pending``; :meth:`ack_confirmed` acks it."""
        pending.confirmed = True  # a plain store: read under the lock by ack_confirmed

    def ack_confirmed(self) -> int:
        """Ack the confirmed messages at the head of the arrival order (all at once: paho's network
        thread wakes once for the burst, not once per ack); the number acked."""
        with self._lock:
            mids: list[int] = []
            acked = 0
            while self._unacked and self._unacked[0].confirmed:
                done = self._unacked.popleft()
                if done.qos == 1:  # a QoS 0 message needs none; the subscription grants no QoS 2
                    mids.append(done.mid)
                self._slots.release()
                done.on_success()
                acked += 1
            self.subscription.ack(mids)
        if acked:
            self.metrics.acknowledged.inc(acked)
            self.metrics.in_flight.dec(acked)
        return acked

