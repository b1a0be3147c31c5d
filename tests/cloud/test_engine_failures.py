"""The transcription worker when its engine fails, through real Kafka: a broken engine (a dead GPU,
which cannot happen here, so an engine that raises stands in for it, subclassing the real interface)
never gets healthy segments dead-lettered, at batch size 1 or 8; a segment the engine fails on while
it works on others is dead-lettered, and the rest flow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import make_segment, produce_segments, read_keyed, unique, wait_until

from cloud.asr import TranscriptionEngine
from cloud.settings import WorkerSettings
from cloud.store import Store
from cloud.transcribe import TranscribeWorker
from contracts import CloudTranscript, DeadLetter, Kafka, Reason, Transcript, decode, encode
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration

POISON_S = 0.3  # the engine's bug: it fails on audio of exactly this length


class FailingEngine(TranscriptionEngine):
    """Fails on every call while ``broken``; otherwise only on a poison segment (``POISON_S`` long)."""

    type_key = "failing-test-engine"
    model_id = "failing-test-engine"

    def __init__(self, settings: WorkerSettings, broken: bool) -> None:
        super().__init__(settings)
        self.broken = broken
        self.calls = 0

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        self.calls += 1
        if self.broken:
            raise RuntimeError("CUDA error: the device is gone")
        if any(a.size == round(POISON_S * 16000) for a in audios):
            raise RuntimeError("the engine's bug")
        return [Transcript(text=f"{a.size} samples", model_id=self.model_id, produced_at=time.time()) for a in audios]


class Running:
    """A transcription worker in a thread, on its own group, pausing briefly between retries."""

    def __init__(self, kafka: Tansu, engine: FailingEngine, batch_size: int) -> None:
        settings = WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap),
            group=unique("transcribe-failures"),
            session_timeout_ms=2000,
            topic_partitions=2,
            batch_size=batch_size,
            max_wait_ms=300,
        )
        self.worker = TranscribeWorker(settings, engine, Store("sqlite://"))  # attempt counts in memory
        self.worker.retry_pause_s, self.worker.max_retry_pause_s = 0.1, 0.4
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def agent() -> str:
    return unique("pi-engine")


def healthy() -> float | None:
    return REGISTRY.get_sample_value("edgecap_worker_healthy", {"worker": "transcribe"})


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for worker in started:
        worker.close()


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_broken_engine_dead_letters_nothing_and_resumes(
    kafka: Tansu, agent: str, running: list[Running], batch_size: int
) -> None:
    engine = FailingEngine(WorkerSettings(), broken=True)
    segments = [make_segment(agent, seq, seconds=0.2 + 0.2 * seq) for seq in range(3)]  # none is poison
    produce_segments(kafka.bootstrap, segments)
    running.append(worker := Running(kafka, engine, batch_size))
    wait_until(lambda: worker.worker.tally["engine_down"] >= 3, 30, "three failed attempts")
    assert healthy() == 0.0

    # The GPU is back: every segment is transcribed, so none was given up (a dead-lettered one would
    # have had its offset stored and never come back). The group reads the shared topic from the
    # start, so the worker's own counts include other tests' segments: this agent's records tell.
    engine.broken = False
    out = [decode(v, CloudTranscript) for v in read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, agent, 3, 30)]
    assert sorted(t.seq for t in out) == [0, 1, 2]
    wait_until(lambda: healthy() == 1.0, 10, "healthy again")


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_segment_the_working_engine_fails_on_is_dead_lettered_and_the_rest_flow(
    kafka: Tansu, agent: str, running: list[Running], batch_size: int
) -> None:
    engine = FailingEngine(WorkerSettings(), broken=False)
    poison = make_segment(agent, 1, seconds=POISON_S)
    segments = [make_segment(agent, 0, seconds=0.2), poison, make_segment(agent, 2, seconds=0.5)]
    produce_segments(kafka.bootstrap, segments)
    running.append(worker := Running(kafka, engine, batch_size))
    out = [decode(v, CloudTranscript) for v in read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, agent, 2, 30)]
    assert sorted(t.seq for t in out) == [0, 2]
    letters = [decode(v, DeadLetter) for v in read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent, 1, 30)]
    assert [(d.reason, d.payload) for d in letters] == [(Reason.BAD_AUDIO, encode(poison))]
    assert worker.worker.tally["engine_down"] == 0


def test_a_segment_longer_than_max_audio_s_is_dead_lettered_before_it_is_decoded(
    kafka: Tansu, agent: str, running: list[Running]
) -> None:
    """A record produced straight into Kafka may declare minutes of audio in a few kB of FLAC;
    the transcriber refuses it (too_large) by its declared length, before decoding it."""
    from runtime.audiocodec import to_audio

    long = make_segment(agent, 0)
    silence = to_audio(bytes(2 * 16000 * 61), 16000, 1, "flac")  # 61 s, a few kB
    long = long.model_copy(update={"audio": silence})
    produce_segments(kafka.bootstrap, [long, make_segment(agent, 1, seconds=0.5)])
    running.append(Running(kafka, FailingEngine(WorkerSettings(), broken=False), 8))
    out = [decode(v, CloudTranscript) for v in read_keyed(kafka.bootstrap, Kafka.TRANSCRIPTS, agent, 1, 30)]
    assert [t.seq for t in out] == [1]
    letters = [decode(v, DeadLetter) for v in read_keyed(kafka.bootstrap, Kafka.DEADLETTER, agent, 1, 30)]
    assert [(d.reason, d.payload) for d in letters] == [(Reason.TOO_LARGE, encode(long))]
    assert "61.0 s of audio, over max_audio_s 60" in letters[0].detail
