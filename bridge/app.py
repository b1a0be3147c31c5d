"""The bridge's lifecycle: metrics → Kafka delivery → publisher → plain producer → uplink → statuses →
bridge loop → downlink.

Threads: paho runs one network thread per MQTT connection (the uplink's calls
:meth:`Uplink.on_message`, the statuses' :meth:`StatusUplink.on_message`); the bridge loop thread
serves the Kafka delivery (callbacks: MQTT acks, receipt entries; retry rounds) and publishes due
receipts; the downlink runs its own consumer thread.
A second, plain producer (not idempotent: it never has to be replaced; the loop polls it) carries
what needs no ordered, retried delivery: agent statuses (:mod:`bridge.statuses`) and the downlink's
dead letters of bad finals.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Self

from confluent_kafka import Producer
from paho.mqtt.client import MQTTMessageInfo

from bridge.delivery import Delivery
from bridge.downlink import Downlink
from bridge.metrics import Metrics
from bridge.mqtt import MqttConnection
from bridge.receipts import ReceiptBook
from bridge.settings import BridgeSettings
from bridge.statuses import StatusUplink
from bridge.uplink import Uplink
from contracts import Down, encode, mqtt_topic
from runtime.kafka import producer_config

log = logging.getLogger(__name__)

_FLUSH_S = 10.0


class Bridge:
    """MQTT ⇄ Kafka. ``start()`` returns at once; :meth:`wait_ready` waits for the subscription."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.receipts = ReceiptBook(settings.receipt_interval_ms / 1000, settings.receipt_max_ids)
        self._stop = threading.Event()
        self.failed = threading.Event()
        """Set when a thread of the bridge died: the process must exit (non-zero) and be restarted."""
        self.failure: str | None = None
        self._loop: threading.Thread | None = None
        self.delivery: Delivery | None = None
        self.producer: Producer | None = None  # statuses and the downlink's dead letters
        self.publisher: MqttConnection | None = None
        self.uplink: Uplink | None = None
        self.statuses: StatusUplink | None = None
        self.downlink: Downlink | None = None

    def start(self) -> Self:
        try:
            return self._start()
        except Exception:
            self.stop()
            raise

    def _start(self) -> Self:
        s = self.settings
        self.metrics.serve(s.metrics_port, s.metrics_host)
        self.delivery = Delivery(
            uplink_producer_config(s),
            self.metrics,
            backoff_s=(s.retry_backoff_min_ms / 1000, s.retry_backoff_max_ms / 1000),
        )
        self.publisher = MqttConnection(
            s.mqtt,
            f"{s.client_id}-out",
            self.metrics,
            persistent=False,
            reconnect_s=(s.reconnect_min_s, s.reconnect_max_s),
        )
        self.publisher.start()
        self.producer = Producer(
            s.kafka.config(
                logger=logging.getLogger("bridge.kafka.plain"), acks="all",
                **{"message.max.bytes": s.kafka_max_record_bytes},
            )
        )
        self.uplink = Uplink(s, self.delivery, self.receipts, self.metrics)
        self.uplink.start()
        self.statuses = StatusUplink(s, self.producer, self.metrics)
        self.statuses.start()
        self._loop = threading.Thread(target=self._run, name="bridge-loop", daemon=True)
        self._loop.start()
        if s.downlink:
            self.downlink = Downlink(s, self.publisher, self.producer, self.metrics, self._fail)
            self.downlink.start()
        log.info(
            "bridge %s started: mqtt %s:%d, kafka %s", s.client_id, s.mqtt.host, s.mqtt.port, s.kafka.bootstrap_servers
        )
        return self

    def _fail(self, why: str) -> None:
        """A thread died: report unhealthy and let the process exit, so that its supervisor restarts
        it (a half-alive bridge would take segments and never deliver finals, say)."""
        self.failure = self.failure or why
        self.metrics.healthy.set(0)
        log.critical("bridge %s is broken: %s", self.settings.client_id, why)
        self.failed.set()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the uplink's and the statuses' subscriptions were granted within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        return all(
            part is not None and part.subscribed.wait(max(0.0, deadline - time.monotonic()))
            for part in (self.uplink, self.statuses)
        )

    def stop(self) -> None:
        """Stop taking messages, let Kafka confirm what is in flight, send the last receipts, close."""
        if self.downlink is not None:
            self.downlink.stop()
        if self.uplink is not None:
            self.uplink.pause()
        if self.statuses is not None:
            self.statuses.pause()
        self._stop.set()
        if self._loop is not None:
            self._loop.join()
        if self.delivery is not None:
            left = self.delivery.flush(_FLUSH_S)  # delivery callbacks now run in this thread
            if left:
                log.warning("%d records not confirmed by Kafka at shutdown; their messages stay unacked", left)
        if self.uplink is not None:
            self.uplink.ack_confirmed()
        if self.producer is not None and self.producer.flush(_FLUSH_S / 5):
            log.warning("statuses or dead letters of the downlink not confirmed by Kafka at shutdown (lost)")
        for info in self._publish_receipts(everything=True):
            try:
                info.wait_for_publish(_FLUSH_S / 5)
            except (ValueError, RuntimeError) as exc:
                log.warning("last receipts not delivered: %s", exc)
                break
        if self.uplink is not None:
            self.uplink.stop()
        if self.statuses is not None:
            self.statuses.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.metrics.close()
        log.info("bridge %s stopped", self.settings.client_id)

    def stats(self) -> dict[str, Any]:
        """The metrics as a plain dict (counters, ``in_flight``, ``dead_lettered`` by reason …)."""
        return self.metrics.snapshot()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        """The bridge loop: serve Kafka delivery callbacks and send due receipts."""
        assert self.delivery is not None and self.uplink is not None
        poll_s = min(0.01, self.settings.receipt_interval_ms / 2000)
        while not self._stop.is_set():
            try:
                self.delivery.serve(poll_s)
                self.uplink.ack_confirmed()
                if self.producer is not None:
                    self.producer.poll(0)
                self._publish_receipts()
            except Exception:
                log.exception("bridge loop error (continuing)")
                self._stop.wait(0.5)

    def _publish_receipts(self, everything: bool = False) -> list[MQTTMessageInfo]:
        if self.publisher is None:
            return []
        sent = []
        for receipt in self.receipts.due(everything):
            topic = mqtt_topic(receipt.agent_id, Down.RECEIPTS)
            sent.append(self.publisher.client.publish(topic, encode(receipt), qos=1))
            self.metrics.receipts.inc()
            self.metrics.receipt_ids.labels("accepted").inc(len(receipt.accepted))
            self.metrics.receipt_ids.labels("rejected").inc(len(receipt.rejected))
            log.debug(
                "receipt to %s: %d accepted, %d rejected",
                receipt.agent_id,
                len(receipt.accepted),
                len(receipt.rejected),
            )
        return sent


def uplink_producer_config(s: BridgeSettings) -> dict[str, Any]:
    """The uplink producer's librdkafka configuration: idempotent with ``acks=all`` (every write
    confirmed by all replicas, once), the bridge's record limit (so that the client refuses a record
    the broker would, should one get past the uplink's check), batching and ordering."""
    return producer_config(
        s.kafka,
        **{
            "logger": logging.getLogger("bridge.kafka.producer"),
            "message.max.bytes": s.kafka_max_record_bytes,
            "linger.ms": s.linger_ms,
            "compression.type": s.compression,
            "delivery.timeout.ms": s.delivery_timeout_ms,
            # a batch that fails for good stops the producer (a fatal error: the bridge replaces it and
            # produces every unconfirmed record again in order) instead of leaving a gap that later
            # batches, already on the wire, would overtake
            "enable.gapless.guarantee": True,
            "max.in.flight.requests.per.connection": s.kafka_requests_in_flight,
        }
    )
