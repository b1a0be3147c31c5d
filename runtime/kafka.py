"""Kafka plumbing of the cloud workers, in confluent-kafka's own idioms.

Consumers never store an offset on their own (``enable.auto.offset.store=False``): a worker stores
a record's offset only after everything it produced for that record has been delivered, the
background auto-commit commits what was stored, a revoke commits synchronously, and ``close()``
(in a ``finally``) commits the rest. The producer is idempotent with ``acks=all``; a full local
queue (``BufferError``) is waited out, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from contracts import DeadLetter
from runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

DEAD_LETTER_MAX_PAYLOAD = 64 * 1024


def ensure_topics(kafka: KafkaSettings, topics: Iterable[str], partitions: int, timeout_s: float = 10.0) -> None:
    """Create missing topics (best effort: production provisions them; a consumer subscribed to a
    missing topic only notices it at its next metadata refresh)."""
    admin = AdminClient(kafka.config())
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in topics],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            log.info("created topic %s with %d partitions", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                log.warning("could not create topic %s: %s", topic, exc)
        except Exception as exc:  # timeouts: the broker may still be starting; consumers retry
            log.warning("could not create topic %s: %s", topic, exc)


def open_consumer(kafka: KafkaSettings, group: str, topics: list[str], session_timeout_ms: int) -> Consumer:
    """A subscribed consumer that commits only offsets its owner stored."""
    consumer = Consumer(
        kafka.config(
            **{
                "group.id": group,
                "enable.auto.offset.store": False,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 1000,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
            }
        )
    )

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _describe(partitions))

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s: committing stored offsets", _describe(partitions))
        commit(c)

    consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
    log.info("group %s subscribed to %s", group, ", ".join(topics))
    return consumer


def commit(consumer: Consumer) -> None:
    """Commit the stored offsets now (nothing stored is fine)."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            log.warning("commit failed: %s", exc)


def poll_batch(consumer: Consumer, max_messages: int, max_wait_s: float, idle_s: float = 0.5) -> list[Message]:
    """Up to ``max_messages`` records: wait ``idle_s`` for the first, then at most ``max_wait_s`` more."""
    batch: list[Message] = []
    deadline: float | None = None
    while len(batch) < max_messages:
        if deadline is None:
            timeout = idle_s
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
        got = consumer.consume(num_messages=max_messages - len(batch), timeout=timeout)
        for msg in got:
            err = msg.error()
            if err is None:
                batch.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        if batch and deadline is None:
            deadline = time.monotonic() + max_wait_s
        if not batch:
            break  # idle: let the caller check its stop event
    return batch


def store_offsets(consumer: Consumer, messages: Iterable[Message]) -> None:
    """Mark records done; the next commit moves the group past them."""
    for msg in messages:
        try:
            consumer.store_offsets(message=msg)
        except KafkaException as exc:  # the partition was revoked meanwhile: its new owner redoes it
            log.warning("cannot store offset %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)


def rewind(consumer: Consumer, messages: Iterable[Message]) -> None:
    """Seek back to the first of ``messages`` in each partition so that they are consumed again."""
    first: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            continue
        first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("cannot rewind %s[%d] to %d: %s", topic, partition, offset, exc)


def dead_letter(msg: Message, reason: str, detail: str) -> DeadLetter:
    """A dead-letter record for a refused Kafka record (payload truncated to 64 KiB)."""
    raw = msg.value() or b""
    key = msg.key()
    agent_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else None
    return DeadLetter(
        reason=reason,
        detail=detail,
        source=f"kafka:{msg.topic()}[{msg.partition()}]@{msg.offset()}",
        agent_id=agent_id,
        received_at=time.time(),
        payload=raw[:DEAD_LETTER_MAX_PAYLOAD],
        truncated=len(raw) > DEAD_LETTER_MAX_PAYLOAD,
    )


class Publisher:
    """An idempotent producer whose :meth:`deliver` says whether everything sent was delivered."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._producer = Producer(kafka.config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
        self._failed = 0

    def send(self, topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key.encode("utf-8") if key else None, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                log.debug("producer queue full: waiting for deliveries")
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def deliver(self, timeout_s: float = 30.0) -> bool:
        """Wait for every record sent so far; False if any failed or is still undelivered."""
        pending = self._producer.flush(timeout_s)
        failed, self._failed = self._failed, 0
        if pending:
            log.error("%d records still undelivered after %.0f s", pending, timeout_s)
        return pending == 0 and failed == 0

    def close(self, timeout_s: float = 10.0) -> None:
        pending = self._producer.flush(timeout_s)
        if pending:
            log.error("%d records undelivered at shutdown", pending)


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
