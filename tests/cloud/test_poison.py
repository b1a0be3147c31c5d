"""A segment that kills the transcription worker's process (issue 9 §4), with real processes.

The worker (``python -m cloud_procs transcribe``: the real ``edgecap worker transcribe`` with
the ``killer-test`` engine, which SIGKILLs its own process on one marked segment, as a segfault or
the OOM killer would) is restarted whenever it dies, as its supervisor would. Its attempt counts live
in the store, so they survive the deaths: the poison segment is dead-lettered (``poison``) after
``max_attempts`` deaths, every other segment of its batch is transcribed, and what comes after flows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_procs import POISON_SAMPLES, cloud_worker
from support import make_segment, produce_segments, read_keyed, unique, wait_until

from cloud.settings import WorkerSettings
from cloud.store import Store
from contracts import CloudTranscript, DeadLetter, Kafka, Reason, decode, encode
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3


def test_a_segment_that_kills_the_worker_is_dead_lettered_after_n_deaths(kafka: Tansu, tmp_path: Path) -> None:
    agent = unique("pi-poison")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = WorkerSettings.load(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap),
        store_url=store_url,
        group=unique("transcribe-poison"),
        session_timeout_ms=3000,
        topic_partitions=2,
        batch_size=8,
        max_wait_ms=1000,
        max_attempts=MAX_ATTEMPTS,
    )
    worker = cloud_worker("transcribe", settings, tmp_path, engine="killer-test")
    poison = make_segment(agent, 3)
    poison = poison.model_copy(update={"audio": poison.audio.model_copy(update={"data": bytes(2 * POISON_SAMPLES)})})
    before = [make_segment(agent, seq, seconds=0.2 + 0.05 * seq) for seq in (0, 1, 2, 4, 5, 6, 7)]
    produce_segments(kafka.bootstrap, [*before[:3], poison, *before[3:]])  # one batch of eight, the poison among them

    deaths = 0

    def supervised_until(done: object, what: str) -> None:
        """Restart the worker whenever it died (as systemd or Kubernetes would) until ``done()``."""

        def check() -> bool:
            nonlocal deaths
            if not worker.alive():
                if worker.proc is not None:
                    deaths += 1
                worker.start()
            return bool(done())  # type: ignore[operator]

        wait_until(check, 240, what, every_s=0.2, detail=lambda: f"{deaths} deaths\n{worker.log_tail()}")

    try:
        letters: list[DeadLetter] = []

        def dead_lettered() -> bool:
            letters[:] = [decode(v, DeadLetter) for v in read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent, 1, 5)]
            return bool(letters)

        supervised_until(dead_lettered, "the poison segment dead-lettered")
        assert [(d.reason, d.payload) for d in letters] == [(Reason.POISON, encode(poison))]
        assert deaths == MAX_ATTEMPTS, worker.log_tail()

        after = [make_segment(agent, seq) for seq in (8, 9)]
        produce_segments(kafka.bootstrap, after)
        out: list[CloudTranscript] = []

        def all_transcribed() -> bool:
            out[:] = [decode(v, CloudTranscript) for v in read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, agent, 9, 5)]
            return len({t.seq for t in out}) >= 9

        supervised_until(all_transcribed, "every other segment transcribed")
        assert sorted({t.seq for t in out}) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        assert deaths == MAX_ATTEMPTS and worker.alive()
        # nothing else was given up, and no count is left behind once every segment is done
        assert len(read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent, 2, 2)) == 1
        store = Store(store_url)
        try:
            wait_until(lambda: not store.attempts([(s.agent_id, s.segment_id) for s in [*before, poison, *after]]),
                       20, "the attempt counts forgotten")  # fmt: skip
        finally:
            store.close()
    finally:
        worker.stop()
