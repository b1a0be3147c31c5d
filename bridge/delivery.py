"""Records into Kafka, each retried by the bridge until Kafka confirms it, in their original order.

librdkafka's idempotent producer keeps one partition's records in order through its own retries,
but gives a record up after ``delivery.timeout.ms``, and a broker that lost its state (a restart
of an in-memory broker, an expired producer id) makes the producer fail for good. The bridge then
takes over, with one rule: a record of an agent (a key, hence a partition) never reaches Kafka
before an earlier record of the same agent that is still unconfirmed.

1. At the first failure the intake gate closes: :meth:`send` blocks, so the uplink stops reading
   MQTT (back-pressure; nothing is buffered without bound).
2. Every record still queued behind it is purged, so none of them can overtake it; they come back
   as failures too and join the same round.
3. Once every outstanding record has settled (confirmed or failed), the failed ones are produced
   again in their original order, after a backoff that doubles up to a bound (``retried`` counts
   them). A fatal producer error replaces the producer first; its unconfirmed records join the round.
4. The gate opens again when a round ends with nothing failed.

Only transient failures take part in rounds. A record refused for good (too large, not authorized,
invalid: :func:`bridge.limits.permanent_reason`) is taken out of the flow instead: its message's
``refused`` callback says what to produce in its place (a dead letter), and the message counts as
done once that is confirmed. The callback runs in the bridge loop, never inside a delivery callback,
which librdkafka may call while ``_produce_lock`` is held (a full queue is waited out in
:meth:`Delivery._produce`): the refusals wait in a list that :meth:`Delivery.serve` settles.

Stopping intake for a whole round (rather than per agent) is the simple choice that keeps the order
of every agent; a round only happens while Kafka is unreachable or failing, when no agent's records
could go through anyway.

A later record must not be on the wire when an earlier one fails either (purging cannot recall it).
The producer therefore keeps one request in flight per connection and runs with librdkafka's gapless
guarantee: a batch that fails for good is a fatal error that stops the producer before the next batch
is sent, and the replacement produces every unconfirmed record again in order (see
:func:`bridge.app.uplink_producer_config`). Records that time out (``delivery.timeout.ms``) are
outside that guarantee: in an outage they time out oldest first and join one round.

Threads: :meth:`send` runs in the intake thread (paho's), :meth:`serve` in the bridge loop thread,
where the delivery callbacks run (and in the intake thread when librdkafka's queue is full).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.limits import permanent_reason, record_bytes
from bridge.metrics import Metrics
from contracts import Kafka, Reason
from runtime.kafka import produce

log = logging.getLogger(__name__)

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)

Records = list[tuple[Kafka, str | None, bytes]]
"""Records to produce: topic, key, value."""
Refuse = Callable[[Kafka, bytes, Reason, str], Records]
"""Called in the bridge loop (no lock held) with the topic, value, reason and detail of a record of
the message that Kafka refused for good; returns the records to produce instead (a dead letter), or
none: the record then counts as settled."""


@dataclass(eq=False)
class _Batch:
    """Records of one MQTT message; ``done`` runs once Kafka confirmed (or, for a record it refused
    for good, the records given in its place) all of them."""

    remaining: int
    done: Callable[[], None]
    describe: str
    refused: Refuse


@dataclass(eq=False)
class _Record:
    seq: int
    topic: Kafka
    key: str | None
    value: bytes
    batch: _Batch
    generation: int = 0
    produced_at: float = field(default=0.0)


class Delivery:
    """The bridge's Kafka producer with its retry rounds; ``open`` is set while intake may proceed."""

    def __init__(
        self,
        config: dict[str, Any],
        metrics: Metrics,
        *,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.metrics = metrics
        self._backoff_min, self._backoff_max = backoff_s
        self._clock = clock
        self.open = threading.Event()
        self.open.set()
        self._lock = threading.Lock()  # the bookkeeping below
        self._produce_lock = threading.Lock()  # produce() calls against a purge or a producer swap
        self._seq = itertools.count()
        self._outstanding: dict[int, _Record] = {}
        self._failed: list[_Record] = []
        self._refused: list[tuple[_Record, Reason, KafkaError]] = []  # settled by serve()
        self._first_error: KafkaError | None = None
        self._generation = 0
        self._fatal = False
        self._purge = False
        self._retry_at: float | None = None
        self._backoff = self._backoff_min
        self._produced: dict[Kafka, Any] = {}  # labelled counters, looked up once per topic
        self.producer = self._new_producer()

    # --- intake thread -------------------------------------------------------------------

    def send(
        self, records: Records, done: Callable[[], None], describe: str, closing: threading.Event, refused: Refuse
    ) -> bool:
        """Produce ``records``; ``done()`` runs once Kafka confirmed them all (retrying as needed), or
        what ``refused`` gave in place of a record Kafka refused for good.

        Blocks while a retry round holds intake; False (nothing sent) if ``closing`` is set meanwhile.
        """
        batch = _Batch(len(records), done, describe, refused)
        while True:
            if not self.open.wait(0.2):
                if closing.is_set():
                    return False
                continue
            with self._produce_lock:
                if not self.open.is_set():  # a failure came in between: wait for its round
                    continue
                for topic, key, value in records:
                    self._produce(_Record(next(self._seq), topic, key, value, batch))
                return True

    def outstanding(self) -> int:
        """Records produced and not yet confirmed, failed ones waiting for their retry included."""
        with self._lock:
            return len(self._outstanding) + len(self._failed) + len(self._refused)

    # --- bridge loop thread --------------------------------------------------------------

    def serve(self, timeout_s: float) -> None:
        """Run delivery callbacks for up to ``timeout_s``, then move a retry round on if one is due."""
        try:
            self.producer.poll(timeout_s)
        except KafkaException as exc:
            self._on_error(exc.args[0])
        if self._fatal:
            self._replace_producer()
        self._settle_refused()
        held = not self.open.is_set()
        self.metrics.intake_held.set(held)
        if not held:
            return
        with self._lock:
            purge, self._purge = self._purge, False
            outstanding, failed = len(self._outstanding), len(self._failed)
        if purge and outstanding:
            with self._produce_lock:  # nothing produced after the failure may stay queued
                self.producer.purge(in_queue=True, in_flight=False, blocking=False)
        if outstanding:
            return
        if not failed:
            log.info("kafka confirms again: intake resumed")
            self._backoff = self._backoff_min
            self.open.set()
            return
        now = self._clock()
        if self._retry_at is None:
            self._retry_at = now + self._backoff
            log.warning(
                "kafka did not confirm %d records (%s); producing them again in %.1f s, intake held",
                failed, self._first_error, self._backoff,
            )
            return
        if now < self._retry_at:
            return
        self._retry_at = None
        self._backoff = min(2 * self._backoff, self._backoff_max)
        with self._lock:
            records, self._failed = sorted(self._failed, key=lambda r: r.seq), []
            self._first_error = None
        self.metrics.retried.inc(len(records))
        with self._produce_lock:
            for record in records:
                self._produce(record)

    def flush(self, timeout_s: float) -> int:
        """Wait for confirmations (callbacks run here, and refusals are settled: their dead letters
        produced and waited for too); the number of records still unconfirmed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.producer.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException as exc:
                log.error("kafka producer failed while flushing: %s", exc)
            if not self._settle_refused() or time.monotonic() >= deadline:
                return self.outstanding()

    def _settle_refused(self) -> bool:
        """Put what each refused record's message gives in its place (a dead letter) in the record's
        batch and produce it; whether any refusal was settled."""
        with self._lock:
            refused, self._refused = self._refused, []
        for record, reason, err in refused:
            size = record_bytes(record.key, record.value)
            detail = f"kafka refused the {size}-byte record to {record.topic.value}: {err.name()}: {err.str()}"
            try:
                instead = record.batch.refused(record.topic, record.value, reason, detail)
            except Exception:  # a bug must not stop the loop, nor hold every later ack behind this one
                self.metrics.errors.inc()
                log.exception("handling the refusal of %s failed; it counts as settled", record.batch.describe)
                instead = []
            with self._produce_lock:
                with self._lock:
                    record.batch.remaining += len(instead) - 1
                    finished = record.batch.remaining == 0
                for topic, key, value in instead:
                    self._produce(_Record(next(self._seq), topic, key, value, record.batch))
            if finished:
                record.batch.done()
        return bool(refused)

    # --- both threads --------------------------------------------------------------------

    def _produce(self, record: _Record) -> None:
        """Hand ``record`` to librdkafka (caller holds ``_produce_lock``)."""
        with self._lock:
            record.generation = self._generation
            record.produced_at = time.monotonic()
            self._outstanding[record.seq] = record
        try:  # a full queue is waited out by serving delivery callbacks in this thread
            produce(
                self.producer, record.topic.value, record.value, record.key,
                partial(self._delivered, record, record.generation),
            )
        except KafkaException as exc:
            self._delivered(record, record.generation, exc.args[0], None)

    def _delivered(self, record: _Record, generation: int, err: KafkaError | None, _msg: Message | None) -> None:
        """A delivery report (or a refusal at ``produce()``). May run while ``_produce_lock`` is held:
        it only does bookkeeping, never produces."""
        reason = None if err is None else permanent_reason(err)
        with self._lock:
            if generation != record.generation or self._outstanding.get(record.seq) is not record:
                return  # a report of a replaced producer: the record is already in a retry round
            del self._outstanding[record.seq]
            if err is not None and reason is not None:  # never to succeed: out of the flow, no round
                self._refused.append((record, reason, err))
                self._fatal = self._fatal or err.fatal()
            elif err is not None:
                self._failed.append(record)
                self.open.clear()
                if err.code() not in _PURGED:
                    self._purge = True
                    self._first_error = self._first_error or err
                self._fatal = self._fatal or err.fatal()
            else:
                record.batch.remaining -= 1
                finished = record.batch.remaining == 0
        if err is not None and reason is not None:
            self.metrics.kafka_refused.labels(err.name()).inc()
            log.warning("kafka refused %s to %s for good (%s): %s", record.batch.describe, record.topic.value,
                        reason.value, err)
            return
        if err is not None:
            self.metrics.delivery_failures.inc()
            log.debug("kafka did not take %s to %s: %s", record.batch.describe, record.topic.value, err)
            return
        counter = self._produced.get(record.topic)
        if counter is None:
            counter = self._produced[record.topic] = self.metrics.produced.labels(record.topic.value)
        counter.inc()
        self.metrics.delivery_seconds.observe(time.monotonic() - record.produced_at)
        if finished:
            record.batch.done()

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback; a fatal error means the producer must be replaced."""
        if err.fatal():
            log.error("kafka producer failed for good: %s", err)
            with self._lock:
                self._fatal = True
                self.open.clear()
        else:
            log.debug("kafka producer: %s", err)

    def _new_producer(self) -> Producer:
        return Producer(self._config | {"error_cb": self._on_error})

    def _replace_producer(self) -> None:
        """Drop a failed producer; its unconfirmed records go into the next retry round."""
        with self._produce_lock:
            old = self.producer
            with self._lock:
                self._fatal = False
                self._generation += 1
                self._failed.extend(self._outstanding.values())
                self._outstanding.clear()
                self.open.clear()
            try:
                old.purge(in_queue=True, in_flight=True, blocking=False)
            except KafkaException as exc:
                log.debug("purging the failed producer: %s", exc)
            self.producer = self._new_producer()
        self.metrics.producer_restarts.inc()
        log.warning("kafka producer replaced; %d unconfirmed records will be produced again", self.outstanding())
