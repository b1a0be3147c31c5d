"""Final captions from Kafka down to each agent's captions topic.

One thread consumes ``edgecap.finals`` and publishes through the bridge's publisher connection;
an offset is stored only after the broker acknowledged the publish (PUBACK), so a crash or a
broker outage redelivers instead of losing a caption.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from paho.mqtt.client import MQTTMessageInfo

from bridge.metrics import Metrics
from bridge.mqtt import MqttConnection
from bridge.settings import BridgeSettings
from bridge.validation import Refused, dead_letter
from contracts import DecodeError, Down, Final, Kafka, decode, encode, mqtt_topic

log = logging.getLogger(__name__)

_BATCH = 100
_RETRY_S = 1.0


class Downlink:
    """Consumer group ``settings.downlink_group`` on ``edgecap.finals``; a thread of its own."""

    def __init__(
        self, settings: BridgeSettings, publisher: MqttConnection, producer: Producer, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.producer = producer
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer = Consumer(
            settings.kafka.config(
                **{
                    "logger": logging.getLogger("bridge.kafka.consumer"),
                    "group.id": settings.downlink_group,
                    "enable.auto.offset.store": False,
                    "enable.auto.commit": True,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": settings.downlink_session_timeout_ms,
                    "heartbeat.interval.ms": max(500, settings.downlink_session_timeout_ms // 4),
                }
            )
        )

    def start(self) -> None:
        self.consumer.subscribe([Kafka.FINALS.value])
        self._thread = threading.Thread(target=self._run, name="bridge-downlink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.publisher.connected.wait(0.2):
                    continue  # publishing now would only pile up copies in paho's queue
                records = self.consumer.consume(_BATCH, timeout=0.2)
                if records:
                    self._deliver(records)
        except Exception:
            log.exception("downlink stopped by an unexpected error")
        finally:
            self.consumer.close()  # commits the stored offsets

    def _deliver(self, records: list[Message]) -> None:
        """Publish a batch, then store offsets in order; on a failed publish rewind that partition."""
        outcomes: list[tuple[Message, MQTTMessageInfo | None]] = []
        for record in records:
            if record.error():
                log.warning("downlink consumer: %s", record.error())
                continue
            raw = record.value() or b""
            try:
                final = decode(raw, Final, max_bytes=self.settings.max_message_bytes)
            except DecodeError as exc:
                self._dead_letter(record, raw, Refused(exc.reason, exc.detail))
                outcomes.append((record, None))
                continue
            topic = mqtt_topic(final.agent_id, Down.CAPTIONS)
            outcomes.append((record, self.publisher.client.publish(topic, raw, qos=1)))
        rewound: set[tuple[str | None, int | None]] = set()
        for record, info in outcomes:
            where = (record.topic(), record.partition())
            if where in rewound:
                continue
            if info is None or self._acknowledged(info):
                self.consumer.store_offsets(message=record)
                if info is not None:
                    self.metrics.downlink_published.inc()
                continue
            self.metrics.downlink_failures.inc()
            log.warning(
                "caption at %s[%s]@%s not acknowledged by MQTT; will retry",
                record.topic(),
                record.partition(),
                record.offset(),
            )
            rewound.add(where)
            self.consumer.seek(TopicPartition(str(record.topic()), record.partition() or 0, record.offset() or 0))
        if rewound:
            self._stop.wait(_RETRY_S)

    def _acknowledged(self, info: MQTTMessageInfo) -> bool:
        try:
            info.wait_for_publish(self.settings.downlink_publish_timeout_s)
        except (ValueError, RuntimeError) as exc:
            log.debug("caption publish failed: %s", exc)
            return False
        return info.is_published()

    def _dead_letter(self, record: Message, raw: bytes, refused: Refused) -> None:
        log.warning(
            "bad record at %s[%s]@%s: %s (%s)",
            record.topic(),
            record.partition(),
            record.offset(),
            refused.reason.value,
            refused.detail,
        )
        self.metrics.dead_lettered.labels(refused.reason.value).inc()
        key = record.key()
        agent_id = key.decode("utf-8", "replace") if key else None
        letter = dead_letter(
            raw, record.topic() or Kafka.FINALS.value, agent_id, refused, self.settings.deadletter_payload_bytes
        )
        while True:
            try:
                self.producer.produce(Kafka.DEADLETTER.value, value=encode(letter), key=key)
                return
            except BufferError:
                time.sleep(0.05)  # the bridge loop polls the producer and frees room
            except KafkaException as exc:
                log.error("could not dead-letter the bad record: %s", exc)
                return
