"""The batch loop survives a record that makes its worker raise (a bug the input triggers), with a
real Kafka-protocol broker: the record is dead-lettered and the rest flow; a worker that raises on
everything dead-letters nothing and retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from confluent_kafka import Message, Producer
from support import read_keyed, unique, wait_until

from contracts import DeadLetter, Kafka, Reason, decode
from devtools.brokers import Tansu
from runtime.kafka import BatchWorker, Publisher
from runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration

INPUT = Kafka.DRAFTS  # any input topic: this worker reads raw bytes


class Echo(BatchWorker):
    """Copies each record's value to ``edgecap.transcripts``; raises on ``b"bug"`` (or on every
    record while ``broken``)."""

    name = "test-echo"
    inputs = (INPUT,)
    outputs = (Kafka.TRANSCRIPTS, Kafka.DEADLETTER)
    batch_size = 8
    max_wait_s = 0.3

    def __init__(self, kafka: Tansu, key: str) -> None:
        super().__init__(KafkaSettings(bootstrap_servers=kafka.bootstrap), unique("echo"), 2000, 2)
        self.key = key
        self.broken = False
        self.retry_pause_s, self.max_retry_pause_s = 0.1, 0.2

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        for msg in batch:
            if self.broken:
                raise RuntimeError("a dependency is down")
            if msg.key() != self.key.encode():
                continue  # other tests' records on the shared topic
            if msg.value() == b"bug":
                raise RuntimeError("a bug")
            publisher.send(Kafka.TRANSCRIPTS, self.key, msg.value() or b"")
        return publisher.deliver()


@pytest.fixture
def key() -> str:
    return unique("pi-batch")


@pytest.fixture
def running(kafka: Tansu, key: str) -> Iterator[Echo]:
    worker = Echo(kafka, key)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(20)
    assert not thread.is_alive()


def produce(kafka: Tansu, key: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for value in values:
        producer.produce(INPUT, key=key, value=value)
    assert producer.flush(10) == 0


def test_a_record_that_makes_the_worker_raise_is_dead_lettered_and_the_rest_flow(
    kafka: Tansu, key: str, running: Echo
) -> None:
    produce(kafka, key, [b"one", b"bug", b"two"])  # one batch: the bug among good records
    out = read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, key, 2, 30)
    assert set(out) == {b"one", b"two"}  # "one" maybe twice: outputs are at least once
    letters = [decode(v, DeadLetter) for v in read_keyed(kafka.bootstrap, Kafka.DEADLETTER, key, 1, 30)]
    assert [(d.reason, d.payload) for d in letters] == [(Reason.INVALID, b"bug")]
    assert "RuntimeError('a bug')" in letters[0].detail
    produce(kafka, key, [b"bug"])  # alone in its batch: dead-lettered after max_record_failures tries
    wait_until(lambda: len(read_keyed(kafka.bootstrap, Kafka.DEADLETTER, key, 2, 5)) >= 2, 60, "the lone bug")
    produce(kafka, key, [b"three"])
    wait_until(lambda: b"three" in read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, key, 3, 5), 60, "the next record")
    assert running.tally["failed_batch"] >= 2 and running.tally.dead_letters[Reason.INVALID.value] == 2


def test_a_worker_that_raises_on_everything_dead_letters_nothing(kafka: Tansu, key: str, running: Echo) -> None:
    running.broken = True
    produce(kafka, key, [b"four", b"five"])
    wait_until(lambda: running.tally["retried_batch"] >= 3, 30, "three retries")
    assert running.tally.dead_letters[Reason.INVALID.value] == 0
    running.broken = False  # fixed (the dependency is back): nothing was given up
    assert set(read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, key, 2, 30)) == {b"five", b"four"}
