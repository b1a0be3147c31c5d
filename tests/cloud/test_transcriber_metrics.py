"""The transcriber's metrics and its answer to a GPU out of memory (issue 10).

A GPU cannot run here, so stand-in engines (subclassing the real interface) play its part: one
that runs "out of memory" above a batch size, raising what CTranslate2 and torch raise, and one that
holds a batch until the test lets it go, so that the metrics of a batch in hand can be read while
the worker runs against a real Kafka-protocol broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import make_segment, produce_segments, read_keyed, unique, wait_until

from cloud import transcribe
from cloud.asr import TranscriptionEngine
from cloud.settings import WorkerSettings
from cloud.store import Store
from cloud.transcribe import TranscribeWorker, is_out_of_memory
from contracts import CloudTranscript, DeadLetter, Kafka, Reason, Segment, Transcript, decode, encode
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

WINDOW_S = 30.0  # the stand-ins pad every segment to one Whisper window, as the unpacked engines do


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class CudaOutOfMemory(RuntimeError):
    """What torch raises (``torch.cuda.OutOfMemoryError``), by name: torch is not imported here."""


CudaOutOfMemory.__name__ = "OutOfMemoryError"


class StandIn(TranscriptionEngine):
    """Transcribes at once, reports one window of padding per segment, records its calls' sizes;
    runs out of memory on more than ``fits`` segments, or on a segment of ``huge`` samples even alone;
    holds each call from the ``hold_from``-th on until ``gate`` is set."""

    type_key = "standin-test"
    model_id = "standin@ct2-int8:0123456789ab"

    def __init__(self, fits: int = 1000, huge: int | None = None, hold_from: int | None = None) -> None:
        super().__init__(WorkerSettings())
        self.fits, self.huge, self.hold_from = fits, huge, hold_from
        self.calls: list[int] = []
        self.in_call = threading.Event()
        self.gate = threading.Event()

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        self.calls.append(len(audios))
        if self.hold_from is not None and len(self.calls) > self.hold_from:
            self.in_call.set()
            self.gate.wait(30)
        if len(audios) > self.fits or any(a.size == self.huge for a in audios):
            raise RuntimeError("CUDA failed with error out of memory")  # CTranslate2's words
        self.last_padding_s = sum(WINDOW_S - a.size / 16000 for a in audios)
        self.last_windows = len(audios)
        return [Transcript(text=f"{a.size} samples", model_id=self.model_id, produced_at=time.time()) for a in audios]


def worker_settings(bootstrap: str = "127.0.0.1:9", **values: object) -> WorkerSettings:
    base: dict[str, object] = {
        "kafka": KafkaSettings(bootstrap_servers=bootstrap),
        "group": unique("transcribe-metrics"),
        "session_timeout_ms": 2000,
        "topic_partitions": 2,
        "batch_size": 8,
        "max_wait_ms": 500,
    }
    return WorkerSettings(**(base | values))  # type: ignore[arg-type]


def audio(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * 16000), dtype=np.float32)


# --- out of memory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        CudaOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA failed with error out of memory"),
        RuntimeError("cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED"),
        MemoryError(),
    ],
)
def test_out_of_memory_errors_are_recognised(exc: BaseException) -> None:
    assert is_out_of_memory(exc)
    try:
        raise ValueError("the engine failed") from exc
    except ValueError as wrapped:
        assert is_out_of_memory(wrapped)  # an engine that wraps the device's error


@pytest.mark.parametrize("exc", [RuntimeError("CUDA error: the device is gone"), ValueError("bad audio")])
def test_other_errors_are_not_out_of_memory(exc: BaseException) -> None:
    assert not is_out_of_memory(exc)


def test_out_of_memory_halves_the_batch_lowers_the_batch_size_and_recovers_slowly() -> None:
    engine = StandIn(fits=2)
    worker = TranscribeWorker(worker_settings(), engine, Store("sqlite://"))
    audios = [audio(0.5 + 0.1 * i) for i in range(8)]
    out = worker._transcribe(audios)
    assert [t is not None and t.text for t in out] == [f"{a.size} samples" for a in audios]  # in order, all done
    assert engine.calls == [8, 4, 2, 2, 4, 2, 2]
    assert worker.tally["oom_splits"] == 3
    assert worker.batch_size == 2 == sample("edgecap_transcribe_effective_batch_size")

    for _ in range(transcribe.OOM_RECOVERY_BATCHES - 1):
        worker._transcribe(audios[:2])
        worker._transcribe(audios[:1])  # a batch that is not full is no evidence
    assert worker.batch_size == 2
    worker._transcribe(audios[:2])
    assert worker.batch_size == 3  # one step up after OOM_RECOVERY_BATCHES full batches
    engine.calls.clear()
    assert all(worker._transcribe(audios[:3]))
    assert engine.calls == [3, 1, 2] and worker.batch_size == 2  # too far again: down to what went through


def test_a_segment_that_runs_out_of_memory_alone_fails_as_any_other() -> None:
    huge = audio(2.0)
    engine = StandIn(fits=4, huge=huge.size)
    worker = TranscribeWorker(worker_settings(), engine, Store("sqlite://"))
    out = worker._transcribe([audio(0.5), audio(0.6), huge])
    assert [t is not None for t in out] == [True, True, False]
    assert engine.calls == [3, 1, 2, 1, 1]  # 3 -> 1 + 2 -> the 2 split to 1 + 1 (the huge one alone fails)


# --- metrics with a real broker ---------------------------------------------------------------


class Running:
    def __init__(self, worker: TranscribeWorker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def broker() -> Iterator[Tansu]:
    """A broker of the test's own: the lag and the batches count only this test's records."""
    with Tansu() as b:
        yield b


def aged(segment: Segment, seconds: float) -> Segment:
    """``segment`` as if its utterance ended ``seconds`` ago."""
    times = {"started_at": segment.started_at - seconds, "ended_at": segment.ended_at - seconds}
    return segment.model_copy(update=times)


@pytest.mark.integration
def test_batch_metrics_lag_and_the_oldest_segment_age(broker: Tansu) -> None:
    agent = unique("pi-metrics")
    engine = StandIn(hold_from=1)  # the first batch goes through; the second is held
    worker = TranscribeWorker(worker_settings(broker.bootstrap, batch_size=2), engine, Store("sqlite://"))
    worker.lag_interval_s = 0.0  # refresh between every batch
    segments = [aged(make_segment(agent, seq, seconds=0.5), 40) for seq in range(6)]
    produce_segments(broker.bootstrap, segments)
    before = {
        name: sample(name)
        for name in (
            "edgecap_transcribe_batch_segments_count",
            "edgecap_transcribe_batch_segments_sum",
            "edgecap_transcribe_batch_fill_sum",
            "edgecap_transcribe_real_time_factor_count",
            "edgecap_transcribe_audio_seconds_total",
            "edgecap_transcribe_padding_seconds_total",
            "edgecap_transcribe_padding_ratio_sum",
        )
    }
    running = Running(worker)
    try:
        assert engine.in_call.wait(30), "the second batch never reached the engine"
        # in hand: segments whose utterances ended 40 s ago
        age = sample("edgecap_transcribe_oldest_segment_age_seconds")
        assert 40 <= age < 70
        lag = {
            labels["partition"]: value
            for labels, value in (
                (s.labels, s.value)
                for metric in REGISTRY.collect()
                if metric.name == "edgecap_worker_consumer_lag"
                for s in metric.samples
                if s.labels.get("worker") == "transcribe" and s.labels.get("topic") == Kafka.SEGMENTS
            )
        }
        assert sum(lag.values()) == 4, lag  # refreshed as the second batch began: 2 of 6 taken in hand
        engine.gate.set()
        out = [decode(v, CloudTranscript) for v in read_keyed(broker.bootstrap, Kafka.TRANSCRIPTS, agent, 6, 30)]
        assert sorted(t.seq for t in out) == list(range(6))
        wait_until(lambda: sample("edgecap_transcribe_batch_segments_count") - before[
            "edgecap_transcribe_batch_segments_count"] == 3, 10, "three batches counted")  # fmt: skip
        wait_until(lambda: sample("edgecap_transcribe_oldest_segment_age_seconds") == 0, 10, "nothing in hand")

        def lag_now() -> float:
            return sum(
                s.value
                for metric in REGISTRY.collect()
                if metric.name == "edgecap_worker_consumer_lag"
                for s in metric.samples
                if s.labels.get("worker") == "transcribe" and s.labels.get("topic") == Kafka.SEGMENTS
            )

        wait_until(lambda: lag_now() == 0, 10, "no lag once everything is done")
    finally:
        engine.gate.set()
        running.close()

    def delta(name: str) -> float:
        return sample(name) - before[name]

    assert delta("edgecap_transcribe_batch_segments_sum") == 6
    assert delta("edgecap_transcribe_batch_fill_sum") == pytest.approx(3 * 2 / 2)  # three full batches of 2
    assert delta("edgecap_transcribe_real_time_factor_count") == 3
    assert delta("edgecap_transcribe_audio_seconds_total") == pytest.approx(6 * 0.5)
    assert delta("edgecap_transcribe_padding_seconds_total") == pytest.approx(6 * (WINDOW_S - 0.5))
    assert delta("edgecap_transcribe_padding_ratio_sum") == pytest.approx(3 * (WINDOW_S - 0.5) / 0.5)
    # the worker stopped: its partitions' lag series are gone
    assert not any(
        s.labels.get("worker") == "transcribe"
        for metric in REGISTRY.collect()
        if metric.name == "edgecap_worker_consumer_lag"
        for s in metric.samples
    )


@pytest.mark.integration
def test_out_of_memory_through_kafka_every_segment_transcribed_the_huge_one_dead_lettered(broker: Tansu) -> None:
    agent = unique("pi-oom")
    huge = make_segment(agent, 5, seconds=1.5)  # small enough to be dead-lettered whole (64 KiB)
    engine = StandIn(fits=2, huge=24000)
    worker = TranscribeWorker(worker_settings(broker.bootstrap, batch_size=8, max_wait_ms=1000), engine,
                              Store("sqlite://"))  # fmt: skip
    segments = [make_segment(agent, seq, seconds=0.3 + 0.1 * seq) for seq in range(5)] + [huge]
    produce_segments(broker.bootstrap, segments)
    running = Running(worker)
    try:
        out = [decode(v, CloudTranscript) for v in read_keyed(broker.bootstrap, Kafka.TRANSCRIPTS, agent, 5, 30)]
        assert sorted(t.seq for t in out) == list(range(5))
        letters = [decode(v, DeadLetter) for v in read_keyed(broker.bootstrap, Kafka.DEADLETTER, agent, 1, 30)]
        assert [(d.reason, d.payload) for d in letters] == [(Reason.BAD_AUDIO, encode(huge))]
        assert worker.tally["oom_splits"] >= 1 and worker.tally["engine_down"] == 0
        assert worker.batch_size <= 2
        # later batches are taken at the lowered size
        engine.calls.clear()
        produce_segments(broker.bootstrap, [make_segment(agent, seq, seconds=0.3) for seq in range(6, 12)])
        more = read_keyed(broker.bootstrap, Kafka.TRANSCRIPTS, agent, 11, 30)
        assert len({decode(v, CloudTranscript).seq for v in more}) == 11
        assert engine.calls and max(engine.calls) <= 2
    finally:
        running.close()
