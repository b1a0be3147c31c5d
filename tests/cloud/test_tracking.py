"""The optional MLflow sink (issue 10, seed 000), against a local SQLite backend store read back with
MLflow's own client: a run per worker start with its settings, per-batch metrics of the transcriber,
per-agent disagreement of the reconciler; a missing package names the extra; a tracking store that
fails never stops a worker."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY
from support import make_segment, read_keyed, unique, wait_until

from cloud.asr import TranscriptionEngine
from cloud.reconcile import Reconciler
from cloud.rule import reconcile
from cloud.settings import WorkerSettings
from cloud.store import Store
from cloud.tracking import DisagreementLog, open_tracker
from cloud.transcribe import TranscribeWorker
from contracts import CloudTranscript, Draft, Kafka, Transcript, encode, new_segment_id
from devtools.brokers import Tansu
from runtime.kafka import Publisher
from runtime.plugins import MissingPackage
from runtime.settings import KafkaSettings

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


class Echo(TranscriptionEngine):
    type_key = "echo-tracking-test"
    model_id = "whisper-test@ct2-int8:0123456789ab"

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        self.last_padding_s = sum(30.0 - a.size / 16000 for a in audios)
        return [Transcript(text=f"{a.size} samples", model_id=self.model_id, produced_at=time.time()) for a in audios]


def settings(bootstrap: str, uri: str | None, **values: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "kafka": KafkaSettings(bootstrap_servers=bootstrap),
        "group": unique("tracking"),
        "session_timeout_ms": 2000,
        "topic_partitions": 2,
        "batch_size": 8,
        "max_wait_ms": 500,
        "worker_name": "w1",
    }
    if uri is not None:
        base["mlflow_tracking_uri"] = uri
    return WorkerSettings(**(base | values))


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(uri: str, experiment: str = "edgecap") -> Any:
    mlflow = client(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None
    (run,) = mlflow.search_runs([exp.experiment_id])
    return run


@pytest.fixture
def broker() -> Iterator[Tansu]:
    """A broker of the test's own: the worker's batches are only this test's segments."""
    with Tansu() as b:
        yield b


@pytest.mark.integration
def test_a_transcriber_start_is_one_run_with_its_settings_and_per_batch_metrics(broker: Tansu, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    agent = unique("pi-tracked")
    worker = TranscribeWorker(settings(broker.bootstrap, uri), Echo(WorkerSettings()), Store("sqlite://"))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for seq in range(3):
        producer.produce(Kafka.SEGMENTS, key=agent, value=encode(make_segment(agent, seq, seconds=0.5)))
    assert producer.flush(10) == 0
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert len(read_keyed(broker.bootstrap, Kafka.TRANSCRIPTS, agent, 3, 30)) == 3
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()

    run = only_run(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "transcribe-w1"
    params = run.data.params
    assert (params["engine"], params["model_id"], params["weights_hash"]) == (
        "echo-tracking-test", "whisper-test@ct2-int8:0123456789ab", "0123456789ab")  # fmt: skip
    assert (params["batch_size"], params["max_wait_ms"], params["beam_size"]) == ("8", "500", "5")
    mlflow = client(uri)
    sizes = mlflow.get_metric_history(run.info.run_id, "batch_size")
    assert sum(m.value for m in sizes) == 3 and sorted(m.step for m in sizes) == list(range(1, len(sizes) + 1))
    rtf = mlflow.get_metric_history(run.info.run_id, "real_time_factor")
    assert len(rtf) == len(sizes) and all(m.value > 0 for m in rtf)
    padding = mlflow.get_metric_history(run.info.run_id, "padding_per_audio_s")
    assert [m.value for m in padding] == pytest.approx([59.0] * len(sizes))  # 29.5 s of padding per 0.5 s


def draft_and_final(store: Store, agent: str, draft: str, cloud: str) -> None:
    sid = new_segment_id()
    now = time.time()
    head = {"agent_id": agent, "segment_id": sid, "seq": 0, "started_at": now - 3, "ended_at": now - 1}
    store.upsert_draft(Draft(**head, draft=Transcript(text=draft, model_id="edge-a", produced_at=now)))
    cloud_text = Transcript(text=cloud, model_id="cloud", produced_at=now)
    store.record_final(CloudTranscript(**head, transcript=cloud_text, worker="w"), reconcile)


def period_ended(log: DisagreementLog) -> Callable[[], bool]:
    return lambda: time.time() - log.since >= log.every_s


@pytest.mark.integration
def test_the_reconciler_logs_each_agents_disagreement_from_its_tick(kafka: Tansu, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    reconciler = Reconciler(settings(kafka.bootstrap, uri, mlflow_disagreement_every_s=0.01), store)
    publisher = Publisher(KafkaSettings(bootstrap_servers=kafka.bootstrap))
    try:
        draft_and_final(store, "pi-a", "the old farmer walk slowly", "The old farmer walked slowly.")  # 1 of 5
        draft_and_final(store, "pi-a", "turn left", "Turn left.")  # 0 of 2
        draft_and_final(store, "pi-b", "hello wrld", "Hello world.")  # 1 of 2
        assert reconciler.tracking is not None
        period_over = period_ended(reconciler.tracking)
        wait_until(period_over, 5, "one period (0.01 s) over: what the tick looks for")
        reconciler.tick(publisher)
        draft_and_final(store, "pi-b", "good morning", "Good morning.")  # 0 of 2, in the next period
        wait_until(period_over, 5, "the next period over")
        reconciler.tick(publisher)
    finally:
        assert reconciler.tracking is not None
        reconciler.tracking.tracker.close()
        publisher.close()
        store.close()

    run = only_run(uri)
    assert run.info.run_name == "reconcile-w1" and run.data.params["final_deadline_s"] == "60.0"
    mlflow = client(uri)

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in mlflow.get_metric_history(run.info.run_id, key)]

    assert history("disagreement.wer.pi-a") == [(0, pytest.approx(1 / 7))]
    assert history("disagreement.segments.pi-a") == [(0, 2)]
    assert history("disagreement.wer.pi-b") == [(0, 0.5), (1, 0.0)]  # over time, period by period
    assert history("disagreement.drafts_kept.pi-b") == [(0, 0.0), (1, 0.0)]


def test_tracking_without_the_package_fails_at_start_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it fails
    with pytest.raises(MissingPackage, match=r"edgecap\[mlflow\]"):
        open_tracker(settings("127.0.0.1:9", "sqlite:///mlflow.db"), "transcribe", {})
    with pytest.raises(MissingPackage, match=r"edgecap\[mlflow\]"):
        TranscribeWorker(settings("127.0.0.1:9", "sqlite:///mlflow.db"), Echo(WorkerSettings()), Store("sqlite://"))
    assert open_tracker(settings("127.0.0.1:9", None), "transcribe", {}) is None  # off: nothing imported


def test_a_failing_tracking_store_is_counted_and_never_stops_the_worker(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # under a file: the store cannot be made
    labels = {"worker": "transcribe", "kind": "start"}
    before = REGISTRY.get_sample_value("edgecap_worker_tracking_errors_total", labels) or 0.0
    worker = TranscribeWorker(settings("127.0.0.1:9", uri), Echo(WorkerSettings()), Store("sqlite://"))
    assert worker.tracker is not None
    out = worker._transcribe([np.zeros(8000, dtype=np.float32)] * 2)
    assert all(t is not None for t in out)
    wait_until(worker.tracker.started.is_set, 60, "the tracker's start attempt")
    assert REGISTRY.get_sample_value("edgecap_worker_tracking_errors_total", labels) == before + 1
    worker._transcribe([np.zeros(8000, dtype=np.float32)])
    worker.tracker.close()
