"""Final captions, agent configurations and asked-for detections from Kafka down to each agent's MQTT topics.

One thread consumes ``edgecap.finals``, ``edgecap.config`` and ``edgecap.detections`` and publishes
through the bridge's publisher connection: a final to the agent's ``captions`` topic, a
configuration to its ``config`` topic *retained*, so an agent that connects later (or restarts)
still gets the latest one, and the detections of a frame whose device asked for them
(``Frame.summary``, copied into ``Detections.summary``) to its ``detections`` topic; other
detections are passed over (their offsets stored, counted as ``downlink_skipped``). A
configuration's record key must be the agent id it names (else it is dead-lettered as
``spoofed_agent``); the bytes published are the record's, unchanged. An offset is stored only after
the broker acknowledged the publish (PUBACK), so a crash or a broker outage redelivers instead of
losing a caption or a configuration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Message, Producer
from paho.mqtt.client import MQTTMessageInfo

from bridge.limits import fitted_dead_letter
from bridge.metrics import Metrics
from bridge.mqtt import MqttConnection
from bridge.settings import BridgeSettings
from contracts import AgentConfig, DecodeError, Detections, Down, Final, Kafka, Reason, decode, mqtt_topic
from runtime.kafka import (
    ensure_topics,
    open_consumer,
    poll_batch,
    produce,
    record_key,
    rewind,
    store_offsets,
)

log = logging.getLogger(__name__)

_BATCH = 100
DOWN_TOPICS: list[str] = [Kafka.FINALS, Kafka.CONFIG, Kafka.DETECTIONS]
_RETRY_S = 1.0


class Downlink:
    """Consumer group ``settings.downlink_group`` on ``edgecap.finals`` and ``edgecap.config``; a thread
    of its own."""

    def __init__(
        self,
        settings: BridgeSettings,
        publisher: MqttConnection,
        producer: Producer,
        metrics: Metrics,
        on_failure: Callable[[str], None],
    ) -> None:
        self.on_failure = on_failure  # the thread died: the bridge is no longer whole
        self.settings = settings
        self.publisher = publisher
        self.producer = producer
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bridge-downlink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        s = self.settings
        # a consumer subscribed to a topic that does not exist yet may see it only minutes later (its
        # next metadata refresh): create them first (best effort; production provisions them)
        ensure_topics(s.kafka, DOWN_TOPICS, s.topic_partitions)
        consumer = open_consumer(
            s.kafka,
            s.downlink_group,
            DOWN_TOPICS,
            s.downlink_session_timeout_ms,
            logger=logging.getLogger("bridge.kafka.consumer"),
        )
        try:
            while not self._stop.is_set():
                if not self.publisher.connected.wait(0.2):
                    continue  # publishing now would only pile up copies in paho's queue
                records = poll_batch(consumer, _BATCH, max_wait_s=0, idle_s=0.2)
                if records:
                    self._deliver(consumer, records)
        except Exception as exc:
            log.exception("downlink stopped by an unexpected error")
            self.on_failure(f"the downlink thread died: {exc!r}")
        finally:
            consumer.close()  # commits the stored offsets

    def _deliver(self, consumer: Consumer, records: list[Message]) -> None:
        """Publish a batch, then store offsets in order; on a failed publish rewind that partition."""
        outcomes: list[tuple[Message, MQTTMessageInfo | None]] = []
        for record in records:
            raw = record.value() or b""
            try:
                route = self._route(record, raw)
            except DecodeError as exc:
                self._dead_letter(record, raw, exc.reason, exc.detail)
                outcomes.append((record, None))
                continue
            if route is None:  # detections nobody asked for
                self.metrics.downlink_skipped.inc()
                outcomes.append((record, None))
                continue
            outcomes.append((record, self.publisher.client.publish(route[0], raw, qos=1, retain=route[1])))
        rewound: set[tuple[str | None, int | None]] = set()
        for record, info in outcomes:
            where = (record.topic(), record.partition())
            if where in rewound:
                continue
            config = record.topic() == Kafka.CONFIG.value
            if info is None or self._acknowledged(info):
                store_offsets(consumer, [record])
                if info is not None:
                    (self.metrics.config_published if config else self.metrics.downlink_published).inc()
                continue
            (self.metrics.config_failures if config else self.metrics.downlink_failures).inc()
            log.warning(
                "%s at %s[%s]@%s not acknowledged by MQTT; will retry",
                "configuration" if config else "caption",
                record.topic(),
                record.partition(),
                record.offset(),
            )
            rewound.add(where)
            rewind(consumer, [record])
        if rewound:
            self._stop.wait(_RETRY_S)

    def _route(self, record: Message, raw: bytes) -> tuple[str, bool] | None:
        """The MQTT topic of a record and whether the broker retains it (None: not for the device);
        :class:`DecodeError` if refused."""
        limit = self.settings.max_message_bytes
        if record.topic() == Kafka.DETECTIONS.value:
            found = decode(raw, Detections, max_bytes=limit)
            return (mqtt_topic(found.agent_id, Down.DETECTIONS), False) if found.summary else None
        if record.topic() != Kafka.CONFIG.value:
            final = decode(raw, Final, max_bytes=limit)
            return mqtt_topic(final.agent_id, Down.CAPTIONS), False
        config = decode(raw, AgentConfig, max_bytes=limit)
        key = record.key()
        if key != config.agent_id.encode("utf-8"):
            # the key picks the partition, hence the order among one agent's configurations
            shown = key if key is None else key[:80]
            raise DecodeError(
                Reason.SPOOFED_AGENT, f"record key {shown!r} is not the configuration's agent_id {config.agent_id!r}"
            )
        return mqtt_topic(config.agent_id, Down.CONFIG), True

    def _acknowledged(self, info: MQTTMessageInfo) -> bool:
        try:
            info.wait_for_publish(self.settings.downlink_publish_timeout_s)
        except (ValueError, RuntimeError) as exc:
            log.debug("downlink publish failed: %s", exc)
            return False
        return info.is_published()

    def _dead_letter(self, record: Message, raw: bytes, reason: Reason, detail: str) -> None:
        where = f"{record.topic()}[{record.partition()}]@{record.offset()}"
        log.warning("bad record at %s: %s (%s)", where, reason.value, detail)
        self.metrics.dead_lettered.labels(reason.value).inc()
        source = record.topic() or Kafka.FINALS.value
        s = self.settings
        letter = fitted_dead_letter(
            raw, source, record_key(record), reason, detail, s.deadletter_payload_bytes, s.kafka_max_record_bytes
        )
        try:  # a full queue is waited out here; the bridge loop polls the producer as well
            produce(self.producer, Kafka.DEADLETTER, letter, record.key())
        except KafkaException as exc:
            log.error("could not dead-letter the bad record: %s", exc)
