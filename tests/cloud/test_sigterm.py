"""SIGTERM finishes and commits the batch in hand (issue 10), with a real worker process.

The worker (``python -m cloud_procs transcribe``: the real ``edgecap worker transcribe`` with the
``slow-test`` engine, which takes a few seconds per batch) gets SIGTERM while a batch is in the
engine. It must finish that batch, publish its transcripts, commit its offsets and exit 0; a
worker started again in the same group must not transcribe any of it a second time.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from cloud_procs import cloud_worker
from confluent_kafka import Consumer, TopicPartition
from support import keyed, make_segment, produce_segments, read_topic, unique, wait_until

from cloud.settings import WorkerSettings
from contracts import CloudTranscript, Kafka, decode
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration

BATCH_STARTED = re.compile(r"slow-test: batch of (\d+)")


def committed(kafka: Tansu, group: str) -> int:
    """The group's committed offsets on edgecap.segments, added up (a fresh broker: records consumed)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        meta = consumer.list_topics(Kafka.SEGMENTS, timeout=5).topics[Kafka.SEGMENTS]
        offsets = consumer.committed([TopicPartition(Kafka.SEGMENTS, p) for p in meta.partitions], timeout=5)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        consumer.close()


def transcripts(kafka: Tansu, agent: str, done_seq: int | None = None, want: int = 0) -> list[CloudTranscript]:
    """The agent's transcripts, once ``want`` are there and (if given) the one of ``done_seq``."""

    def done(records: list[tuple[bytes | None, bytes]]) -> bool:
        out = [decode(v, CloudTranscript) for v in keyed(records, agent)]
        return len(out) >= want and (done_seq is None or any(t.seq == done_seq for t in out))

    return [decode(v, CloudTranscript) for v in keyed(read_topic(kafka.bootstrap, Kafka.TRANSCRIPTS, done), agent)]


def test_sigterm_mid_batch_finishes_publishes_and_commits_it(tmp_path: Path) -> None:
    agent = unique("pi-sigterm")
    group = unique("transcribe-sigterm")
    with Tansu() as kafka:
        settings = WorkerSettings.load(
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap),
            store_url=f"sqlite:///{tmp_path / 'store.db'}",
            group=group,
            session_timeout_ms=3000,
            topic_partitions=2,
            batch_size=8,
            max_wait_ms=1000,
        )
        first = [make_segment(agent, seq, seconds=0.2 + 0.05 * seq) for seq in range(4)]
        produce_segments(kafka.bootstrap, first)
        worker = cloud_worker("transcribe", settings, tmp_path, engine="slow-test")
        worker.start()
        try:
            started: list[int] = []

            def batch_in_engine() -> bool:
                started[:] = [int(n) for n in BATCH_STARTED.findall(worker.log_tail(100_000))]
                return bool(started)

            wait_until(batch_in_engine, 60, "a batch in the slow engine", every_s=0.05, detail=worker.log_tail)
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0, worker.log_tail()
            # exactly one batch was taken in hand: the stop is read between batches
            assert len(BATCH_STARTED.findall(worker.log_tail(100_000))) == 1, worker.log_tail()
            in_hand = started[0]
            out = transcripts(kafka, agent, want=in_hand)
            assert len(out) == in_hand == len({t.seq for t in out}), worker.log_tail()
            assert committed(kafka, group) == in_hand
        finally:
            worker.stop()

        # the same group again: the committed batch is not redone, the rest and a new segment are done once
        again = cloud_worker("transcribe", settings, tmp_path, engine="echo-test")
        last = make_segment(agent, 4, seconds=1.0)  # the longest: last of any batch it shares (sorted by length)
        produce_segments(kafka.bootstrap, [last])
        again.start()
        try:
            out = transcripts(kafka, agent, done_seq=4)
            assert sorted(t.seq for t in out) == [0, 1, 2, 3, 4], again.log_tail()
            wait_until(lambda: committed(kafka, group) == 5, 30, "every offset committed", detail=again.log_tail)
        finally:
            assert again.stop() == 0, again.log_tail()
