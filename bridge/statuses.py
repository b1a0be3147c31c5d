"""Agent statuses (heartbeats and last wills) from MQTT to ``edgecap.status``: checked, produced
without waiting for Kafka, never receipted.

A status is small, frequent and superseded by the next one, and the reconciler keeps the newest per
device by the device's own clock, whatever order they arrive in. So it does not take the segments'
path (in-flight slots, Kafka's confirmation before the MQTT ack, retry rounds, receipts), nor their
MQTT session: :class:`StatusUplink` is a persistent, shared, manually acknowledged subscription of
its own (client id ``<client_id>-status``, in the same shared group, so with two replicas each status
goes through one of them). Heartbeats thus never take room in the segments' MQTT window (its
Receive Maximum is ``max_in_flight``) nor wait behind segments that wait for Kafka.

- Each status is checked (it decodes as a status, is at most ``max_status_bytes`` and names the
  agent of its topic) and handed to the bridge's plain producer (the one the downlink's dead
  letters use; the bridge loop polls it) without waiting; then it is acknowledged, in the paho
  thread, so in arrival order. A status refused is dead-lettered the same way, never receipted (the
  agent keeps nothing to delete or resend). Neither waits for room when librdkafka's queue is full:
  that status is counted lost.
- What this gives up, on purpose: a status acknowledged on MQTT but not yet in Kafka is lost if the
  bridge crashes (or Kafka refuses it, or stays away past the producer's message timeout); nothing
  retries it, and the agent's next heartbeat replaces it. A lost last will stays lost (the broker
  hands a retained status to no shared subscription); the fleet view's ``last seen`` (the cloud's
  clock) still ages. A status that arrives while the bridge stops is left unacknowledged: the
  session (or another replica) gets it again.
- It is counted on its own metrics (``statuses_received``, ``statuses_forwarded``,
  ``statuses_refused`` by reason, ``statuses_lost``), never in the segments' ``received``,
  ``acknowledged``, ``produced``, ``in_flight`` or ``dead_lettered``.

Threads: :meth:`StatusUplink.on_message` runs in this connection's paho network thread; the delivery
reports run in the bridge loop thread, which polls the producer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.limits import fitted_dead_letter
from bridge.metrics import Metrics
from bridge.mqtt import Subscription
from bridge.settings import BridgeSettings
from bridge.validation import Refused, check_status, topic_route
from contracts import Kafka, Reason, Up, shared_filter

log = logging.getLogger(__name__)

_Report = Callable[[KafkaError | None, Message], None]
"""A librdkafka delivery report callback."""


class StatusUplink:
    """The subscription to every agent's status: each one checked, produced (or dead-lettered)
    without waiting for Kafka, then acknowledged."""

    def __init__(self, settings: BridgeSettings, producer: Producer, metrics: Metrics) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self._closing = threading.Event()
        self._losing = False  # warn at the first loss after a success, not for every heartbeat of an outage
        self.subscription = Subscription(
            settings.mqtt,
            f"{settings.client_id}-status",
            [shared_filter(settings.shared_group, Up.STATUS)],
            metrics,
            metrics.statuses_connected,
            self.on_message,
            reconnect_s=(settings.reconnect_min_s, settings.reconnect_max_s),
        )
        self.subscribed = self.subscription.subscribed

    def start(self) -> None:
        self.subscription.start()

    def pause(self) -> None:
        """Forward no more statuses; those that arrive stay unacknowledged and are redelivered later."""
        self._closing.set()

    def stop(self) -> None:
        self.subscription.stop()

    # --- paho network thread -------------------------------------------------------------

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._closing.is_set():
            return
        try:
            self.forward(msg.topic, bytes(msg.payload))
        except Exception:  # a bug must not stop paho's network thread; a status is never worth holding
            self.metrics.errors.inc()
            log.exception("failed to handle the status %d on %s; acknowledged anyway", msg.mid, msg.topic)
        if msg.qos == 1:  # a QoS 0 message needs no ack; the subscription grants no QoS 2
            self.subscription.ack([msg.mid])

    def forward(self, topic: str, raw: bytes) -> None:
        """Check the status ``raw`` that came on ``topic`` and produce it to ``edgecap.status`` keyed by
        its agent, or dead-letter it with its reason; never waits for Kafka."""
        self.metrics.statuses_received.inc()
        agent_id: str | None = None
        try:
            agent_id, channel = topic_route(topic)
            if channel is not Up.STATUS:
                raise Refused(Reason.INVALID, f"not a status topic: {topic!r}")
            check_status(raw, agent_id, max_bytes=self.settings.max_status_bytes)
        except Refused as refused:
            self._refuse(topic, raw, agent_id, refused)
            return
        except Exception as exc:  # a bug in a check: refuse the status rather than forward it unchecked
            self.metrics.errors.inc()
            log.exception("checking a status on %s failed; it is dead-lettered", topic)
            self._refuse(topic, raw, agent_id, Refused(Reason.INVALID, f"the bridge could not check it: {exc!r}"[:300]))
            return
        self._produce(Kafka.STATUS, agent_id, raw, f"status of {agent_id}", self._delivered)

    def _refuse(self, topic: str, raw: bytes, agent_id: str | None, refused: Refused) -> None:
        log.warning("refused status on %s: %s (%s)", topic, refused.reason.value, refused.detail)
        self.metrics.statuses_refused.labels(refused.reason.value).inc()
        s = self.settings
        letter = fitted_dead_letter(
            raw, topic, agent_id, refused.reason, refused.detail, s.deadletter_payload_bytes, s.kafka_max_record_bytes
        )
        describe = f"dead letter of a status from {topic}"
        self._produce(Kafka.DEADLETTER, agent_id, letter, describe, self._letter_delivered)

    def _produce(self, topic: Kafka, key: str | None, value: bytes, describe: str, report: _Report) -> None:
        try:
            self.producer.produce(topic.value, value=value, key=key, on_delivery=report)
        except BufferError:  # librdkafka's queue is full (Kafka away for long): no waiting for room
            self._lost(describe, "the producer's queue is full")
        except KafkaException as exc:
            self._lost(describe, str(exc.args[0]))

    # --- bridge loop thread (delivery reports) -------------------------------------------

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.metrics.statuses_forwarded.inc()
            self._losing = False
        else:
            self._lost(f"status of {_key(msg)}", str(err))

    def _letter_delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._lost(f"dead letter of a status of {_key(msg)}", str(err))

    def _lost(self, describe: str, why: str) -> None:
        self.metrics.statuses_lost.inc()
        if self._losing:
            log.debug("%s lost: %s", describe, why)
            return
        self._losing = True
        log.warning("%s lost (not retried: the next heartbeat replaces it; more losses at debug): %s", describe, why)


def _key(msg: Message) -> str:
    key = msg.key()
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
