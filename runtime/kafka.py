"""Kafka, written once for the bridge and the cloud workers, in confluent-kafka's own idioms.

Producers are idempotent with ``acks=all`` (:func:`producer_config`; the bridge adds its ordering
settings, ``edgecap config`` its timeout), and a full local queue (``BufferError``) is waited out,
never dropped (:func:`produce`). Consumers never store an offset on their own
(:func:`consumer_config`: ``enable.auto.offset.store=False``): their owner stores a record's offset
only after everything it produced for that record has been delivered, the background auto-commit
commits what was stored, a revoke commits synchronously, and ``close()`` (in a ``finally``) commits
the rest. A refused input becomes a :func:`dead_letter`.

Every Kafka worker of the cloud is a :class:`BatchWorker`: it declares what it reads and writes and
how it handles one batch; the loop around it (poll, handle, store offsets or rewind) is written here.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter as Counts
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter, Gauge

from contracts import DeadLetter, Kafka, Reason, encode
from contracts.bounds import MAX_DETAIL_CHARS, MAX_SOURCE_CHARS, clip
from runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

DEAD_LETTER_MAX_PAYLOAD = 64 * 1024

RECORDS = Counter(
    "edgecap_worker_records_total",
    "Kafka records handled by a cloud worker, by worker and outcome.",
    ["worker", "outcome"],
)
DEAD_LETTERS = Counter(
    "edgecap_worker_dead_letters_total",
    "Kafka records a cloud worker refused and sent to edgecap.deadletter, by worker and reason.",
    ["worker", "reason"],
)
HEALTHY = Gauge(
    "edgecap_worker_healthy",
    "1 while a Kafka worker's batches go through; 0 while it retries one (its engine, store or Kafka fails).",
    ["worker"],
)
CONSUMER_LAG = Gauge(
    "edgecap_worker_consumer_lag",
    "Records of an assigned partition a Kafka worker has not yet taken in hand: the partition's high "
    "watermark (as of the consumer's last fetch) minus the consumer's position; refreshed between "
    "batches, at most every few seconds.",
    ["worker", "group", "topic", "partition"],
)
CONSUMED = Counter(
    "edgecap_worker_consumed_total",
    "Kafka records a worker is done with (its batch handled and the offsets stored), by worker and topic.",
    ["worker", "topic"],
)
PRODUCED = Counter(
    "edgecap_worker_produced_total",
    "Records a worker produced that Kafka confirmed (dead letters included), by worker and topic.",
    ["worker", "topic"],
)


# --- configuration ------------------------------------------------------------------------


KAFKA_MAX_RECORD_BYTES = 1_048_588
"""Apache Kafka's default record limit (the broker's ``message.max.bytes``: 1 MiB and 12 bytes)."""


RECORD_OVERHEAD_BYTES = 36 + 61
"""What a record costs beyond its key and value against the limit, sent alone: librdkafka's bound on
a v2 record's framing (36) and the header of the batch that carries it (61)."""


def record_limit(kafka: KafkaSettings) -> int:
    """The record limit a producer of ``kafka`` enforces (:func:`producer_config`): its
    ``message.max.bytes``."""
    return int(kafka.extra.get("message.max.bytes", KAFKA_MAX_RECORD_BYTES))


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: every record confirmed by all in-sync replicas (``acks=all``) and
    written once however often librdkafka retries it. librdkafka refuses at ``produce()`` a record
    over its ``message.max.bytes`` (key, value and 36 bytes of framing), here Apache Kafka's default
    limit unless ``kafka.extra`` or ``overrides`` set it, rather than send it to a broker that
    refuses it. ``overrides`` add librdkafka properties."""
    limit = {} if "message.max.bytes" in kafka.extra else {"message.max.bytes": KAFKA_MAX_RECORD_BYTES}
    return kafka.config(**({"acks": "all", "enable.idempotence": True} | limit | overrides))


def consumer_config(kafka: KafkaSettings, group: str, session_timeout_ms: int, **overrides: Any) -> dict[str, Any]:
    """A consumer in ``group`` that commits only the offsets its owner stored, starting from the
    earliest record when the group has none. ``overrides`` add librdkafka properties."""
    return kafka.config(
        **(
            {
                "group.id": group,
                "enable.auto.offset.store": False,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 1000,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
            }
            | overrides
        )
    )


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


# --- producing ----------------------------------------------------------------------------


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: str | bytes | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Hand one record to librdkafka; while its local queue is full (``BufferError``), serve delivery
    reports in this thread to free room and try again: a record is never dropped here. A
    ``KafkaException`` (a fatal producer, a record too large) is the caller's."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            log.debug("producer queue full: waiting for deliveries")
            producer.poll(0.05)


class Publisher:
    """An idempotent producer whose :meth:`deliver` says whether everything sent was delivered.
    With a ``worker`` name, confirmed records count in ``edgecap_worker_produced_total``."""

    def __init__(self, kafka: KafkaSettings, worker: str | None = None) -> None:
        self._producer = Producer(producer_config(kafka, **{"linger.ms": 5}))
        self._failed = 0
        self._worker = worker

    def send(self, topic: str, key: str | None, value: bytes) -> None:
        produce(self._producer, topic, value, key.encode("utf-8") if key else None, self._on_delivery)
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)
        elif self._worker is not None:
            PRODUCED.labels(self._worker, msg.topic() or "").inc()

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


def dead_letter(
    payload: bytes,
    source: str,
    agent_id: str | None,
    reason: Reason,
    detail: str,
    keep_bytes: int = DEAD_LETTER_MAX_PAYLOAD,
) -> DeadLetter:
    """The dead-letter record of a refused input from ``source`` (an MQTT or Kafka topic), its
    payload truncated to ``keep_bytes`` and its texts to the contract's bounds."""
    return DeadLetter(
        reason=reason,
        detail=clip(detail, MAX_DETAIL_CHARS),
        source=clip(source, MAX_SOURCE_CHARS),
        agent_id=None if agent_id is None else clip(agent_id, MAX_SOURCE_CHARS),
        received_at=time.time(),
        payload=payload[:keep_bytes],
        truncated=len(payload) > keep_bytes,
    )


def record_key(msg: Message) -> str | None:
    """A record's key as text: the agent id, since edgecap keys every record by it."""
    key = msg.key()
    return key.decode("utf-8", "replace") if isinstance(key, bytes) and key else None


# --- consuming ----------------------------------------------------------------------------


def open_consumer(
    kafka: KafkaSettings, group: str, topics: list[str], session_timeout_ms: int, **overrides: Any
) -> Consumer:
    """A consumer subscribed to ``topics`` (:func:`consumer_config`) that commits on revoke."""
    consumer = Consumer(consumer_config(kafka, group, session_timeout_ms, **overrides))

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


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


# --- the batch worker ---------------------------------------------------------------------


class ConsumerLag:
    """``edgecap_worker_consumer_lag`` of one worker's consumer, per assigned partition: the high
    watermark minus the position (the next offset the worker will take in hand; where it has taken
    nothing yet, the group's committed offset, else the low watermark: where ``earliest`` starts).

    The watermarks are those librdkafka cached from its last fetch response (``cached=True``), which
    costs no request and is what the consumer's own ``consumer_lag`` statistic uses; a partition
    without a fetch yet is left out. Partitions revoked since the last refresh are removed.
    Refreshed at most every ``interval_s`` and only between batches, so during a long batch it
    shows the lag as the batch began. A failure is logged, never raised: lag is only a metric."""

    def __init__(self, worker: str, group: str, consumer: Consumer, interval_s: float) -> None:
        self.worker = worker
        self.group = group
        self.consumer = consumer
        self.interval_s = interval_s
        self._next = 0.0
        self._shown: set[tuple[str, str]] = set()

    def refresh(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval_s
        try:
            self._update()
        except KafkaException as exc:
            log.debug("consumer lag not refreshed: %s", exc)

    def _update(self) -> None:
        assigned = self.consumer.assignment()
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assigned)} if assigned else {}
        unknown = [TopicPartition(t, p) for (t, p), offset in positions.items() if offset < 0]
        if unknown:
            try:
                for tp in self.consumer.committed(unknown, timeout=2):
                    positions[(tp.topic, tp.partition)] = tp.offset
            except KafkaException as exc:  # the group coordinator is away: from the low watermark
                log.debug("committed offsets not read for the lag: %s", exc)
        shown: set[tuple[str, str]] = set()
        for (topic, partition), position in positions.items():
            low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high < 0:
                continue  # nothing fetched from it yet
            start = position if position >= 0 else max(low, 0)
            labels = (topic, str(partition))
            CONSUMER_LAG.labels(self.worker, self.group, *labels).set(max(0, high - start))
            shown.add(labels)
        self._remove(self._shown - shown)
        self._shown = shown

    def clear(self) -> None:
        """Remove this consumer's series (the worker stopped: it has no partitions)."""
        self._remove(self._shown)
        self._shown = set()

    def _remove(self, series: set[tuple[str, str]]) -> None:
        for labels in series:
            try:
                CONSUMER_LAG.remove(self.worker, self.group, *labels)
            except KeyError:  # already gone (another instance of the same worker in this process)
                pass


class Tally:
    """Counts of one worker instance by outcome (read by tests and logs), mirrored into Prometheus."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.counts: Counts[str] = Counts()
        self.dead_letters: Counts[str] = Counts()  # by reason; their sum is counts["dead_letter"]

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        RECORDS.labels(self.worker, outcome).inc(n)

    def dead_letter(self, reason: Reason) -> None:
        """One record refused for ``reason``: counted as the outcome ``dead_letter`` and by reason."""
        self.add("dead_letter")
        self.dead_letters[reason.value] += 1
        DEAD_LETTERS.labels(self.worker, reason.value).inc()

    def __getitem__(self, outcome: str) -> int:
        return self.counts[outcome]


class BatchWorker(ABC):
    """The one way to write a Kafka worker: a batch of records in, their outputs out, offsets after.

    A worker declares ``name`` (its logs and its counts' ``worker`` label), the ``inputs`` it
    consumes, the ``outputs`` it produces to (``edgecap.deadletter`` included if it dead-letters),
    ``batch_size`` and ``max_wait_s`` (a batch is up to ``batch_size`` records, or whatever arrived
    within ``max_wait_s`` of the first), and implements :meth:`handle`::

        class Detector(BatchWorker):
            name = "detect"
            inputs = (Kafka.FRAMES,)
            outputs = (Kafka.DETECTIONS, Kafka.DEADLETTER)
            batch_size, max_wait_s = 16, 0.1

            def handle(self, batch, publisher):
                ...  # publisher.send(...) each output, self.dead_letter(...) each bad record
                return publisher.deliver()

    :meth:`run` creates missing topics, then loops until ``stop`` is set: poll a batch, hand it to
    :meth:`handle`, and if that returns True store the batch's offsets (the group moves past it);
    if False (an output was not delivered, a dependency failed) seek back to the batch's first
    records and try them again after a pause (``retry_pause_s``, doubling while the failures go on, up
    to ``max_retry_pause_s``); ``edgecap_worker_healthy`` is 0 meanwhile. A set ``stop`` (SIGTERM) ends the loop only
    between batches, so the batch in hand is finished and its offsets stored; closing the consumer
    commits them. A worker that crashes before storing a batch's offsets leaves that batch to be
    redone by the group: outputs are at least once, and consumers downstream tolerate duplicates.
    Between batches the loop refreshes ``edgecap_worker_consumer_lag`` (:class:`ConsumerLag`, at most
    every ``lag_interval_s``). Records in and out show in ``edgecap_worker_consumed_total`` (a batch
    done) and ``edgecap_worker_produced_total`` (an output Kafka confirmed), the dashboard's
    throughput (``GET /api/system``).

    Work that no record brings (the reconciler's deadline finals) goes in :meth:`tick`: with
    ``tick_interval_s`` set, the loop calls it between batches, in its own thread (never while a
    batch is in hand), at most that often, and at least every ``tick_interval_s`` plus one poll (0.5 s
    while idle) plus one batch.
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]
    batch_size: int
    max_wait_s: float
    retry_pause_s: float = 2.0
    max_retry_pause_s: float = 30.0
    max_record_failures: int = 3  # a record that makes handle() raise alone this often is dead-lettered
    tick_interval_s: float | None = None  # call tick() between batches at most this often; None: never
    lag_interval_s: float = 5.0  # refresh edgecap_worker_consumer_lag at most this often (ConsumerLag)

    def __init__(self, kafka: KafkaSettings, group: str, session_timeout_ms: int, topic_partitions: int) -> None:
        """``group`` is the consumer group the worker's replicas share (they split the inputs'
        partitions); a replica silent for ``session_timeout_ms`` loses its partitions to the others.
        Topics created when missing get ``topic_partitions`` partitions."""
        self.kafka = kafka
        self.group = group
        self.session_timeout_ms = session_timeout_ms
        self.topic_partitions = topic_partitions
        self.tally = Tally(self.name)
        self._record_failures: dict[str, int] = {}  # "topic[partition]@offset": times handle() raised on it

    def tick(self, publisher: Publisher) -> None:
        """Periodic work between batches (see the class docstring); it sends through ``publisher`` and
        waits for delivery itself. It must not raise: a failure is logged and left to the next tick."""
        return None  # nothing to do unless a worker has periodic work

    @abstractmethod
    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Produce the outputs of ``batch`` through ``publisher`` and wait for their delivery
        (:meth:`Publisher.deliver`); True when the batch is done, False to have it retried."""

    def run(self, stop: threading.Event) -> None:
        """Consume and handle batches until ``stop`` is set (see the class docstring)."""
        ensure_topics(self.kafka, dict.fromkeys([*self.inputs, *self.outputs]), self.topic_partitions)
        publisher = Publisher(self.kafka, worker=self.name)
        consumer = open_consumer(self.kafka, self.group, list(self.inputs), self.session_timeout_ms)
        lag = ConsumerLag(self.name, self.group, consumer, self.lag_interval_s)
        healthy = HEALTHY.labels(self.name)
        healthy.set(1)
        pause = self.retry_pause_s
        next_tick = time.monotonic()
        try:
            while not stop.is_set():
                if self.tick_interval_s is not None and time.monotonic() >= next_tick:
                    self.tick(publisher)
                    next_tick = time.monotonic() + self.tick_interval_s
                lag.refresh()
                batch = poll_batch(consumer, self.batch_size, self.max_wait_s)
                if not batch:
                    continue
                if self._handle_guarded(batch, publisher):
                    store_offsets(consumer, batch)
                    for topic, n in Counts(msg.topic() or "" for msg in batch).items():
                        CONSUMED.labels(self.name, topic).inc(n)
                    healthy.set(1)
                    pause = self.retry_pause_s
                else:
                    self.tally.add("retried_batch")
                    healthy.set(0)
                    rewind(consumer, batch)
                    stop.wait(pause)
                    pause = min(2 * pause, self.max_retry_pause_s)
        finally:
            lag.clear()
            publisher.close()
            consumer.close()
            log.info("%s worker stopped: %s", self.name, dict(self.tally.counts))

    def _handle_guarded(self, batch: list[Message], publisher: Publisher) -> bool:
        """:meth:`handle`, surviving a record that makes it raise (a bug its input triggers): the
        batch is handled again record by record, and a record that raises while others of its batch
        go through, or that raised as the only record of its batch ``max_record_failures`` times, is
        dead-lettered (``invalid``, the error in the detail) so that the records behind it flow. When
        every record of a larger batch raises (a failing dependency, not bad input) nothing is
        dead-lettered: the batch is retried after the pause, like a batch :meth:`handle` said to retry.
        Outputs the failed call had already sent may go out twice (outputs are at least once)."""
        try:
            return self.handle(batch, publisher)
        except Exception:
            log.exception("%s worker failed on a batch of %d: handling its records one by one", self.name, len(batch))
            self.tally.add("failed_batch")
        failed: list[tuple[Message, str]] = []
        worked = False
        for msg in batch:
            try:
                if not self.handle([msg], publisher):
                    return False
                worked = True
            except Exception as exc:
                log.exception("%s worker failed on %s[%s]@%s", self.name, msg.topic(), msg.partition(), msg.offset())
                failed.append((msg, repr(exc)))
        refused = []
        for msg, error in failed:
            if len(batch) == 1:  # alone: nothing tells a bad record from a failing dependency but repetition
                where = _where(msg)
                self._record_failures[where] = self._record_failures.get(where, 0) + 1
                if self._record_failures[where] >= self.max_record_failures:
                    refused.append((msg, error))
            elif worked:
                refused.append((msg, error))
        if not refused:
            return False
        for msg, error in refused:
            self._record_failures.pop(_where(msg), None)
            self.dead_letter(publisher, msg, Reason.INVALID, f"the {self.name} worker failed on it: {error}")
        if len(refused) < len(failed):
            return False  # the others are retried (and counted again)
        return publisher.deliver()

    def dead_letter(self, publisher: Publisher, msg: Message, reason: Reason, detail: str) -> None:
        """Send a record this worker refuses to ``edgecap.deadletter`` (counted; its offset is
        stored with the batch, so the worker goes on)."""
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        log.warning("dead letter from %s: %s: %s", where, reason.value, detail)
        letter = dead_letter(msg.value() or b"", f"kafka:{where}", record_key(msg), reason, detail)
        publisher.send(Kafka.DEADLETTER, letter.agent_id, encode(letter))
        self.tally.dead_letter(reason)


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
