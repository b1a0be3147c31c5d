"""An optional MLflow sink for the cloud workers: what ran, how fast, and how often the cloud
disagreed with the devices.

Off unless ``mlflow_tracking_uri`` is set (an SQL store such as ``sqlite:///mlflow.db``, or a
tracking server's URL); it needs the ``mlflow`` extra (mlflow-skinny), and a worker configured for it
without the package stops at start naming the extra. Each worker start is one MLflow run in
``mlflow_experiment``, named after the worker and its instance, with the worker's settings as
parameters (engine, model id and the weights hash inside it, batch settings); the transcriber logs
per-batch metrics (real-time factor, batch size and fill, padding per audio second), the reconciler
each agent's draft-to-final disagreement every ``mlflow_disagreement_every_s``.

Nothing in a worker waits for MLflow: calls go through a bounded queue to one thread of their own
(an HTTP tracking server retries for minutes when it is away). A failed call, or a record dropped
because the queue is full, is logged and counted (``edgecap_worker_tracking_errors_total``), and the
worker goes on. MLflow's own telemetry is turned off before it is imported.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from cloud.captions import Disagreement
from cloud.settings import WorkerSettings
from cloud.store import Store
from runtime.plugins import require

log = logging.getLogger(__name__)

# MLflow's telemetry is on by default since 3.2: off, before anything of this process imports mlflow
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TRACKING_ERRORS = Counter(
    "edgecap_worker_tracking_errors_total",
    "MLflow calls of a cloud worker that failed or were dropped (queue full), by worker and kind.",
    ["worker", "kind"],
)
QUEUE_SIZE = 1000  # calls waiting for the tracking thread; beyond this they are dropped (and counted)
CLOSE_TIMEOUT_S = 10.0

Call = Callable[[Any, str], None]  # (MlflowClient, run id) -> None


def weights_hash(model_id: str) -> str | None:
    """The weights hash a model id names after its ``:`` (``whisper-tiny.en@ct2-int8:1a5afae06a4d``)."""
    _, sep, digest = model_id.rpartition(":")
    return digest if sep and digest else None


class Tracker:
    """One MLflow run of one worker process, written by a thread of its own (see the module)."""

    def __init__(self, settings: WorkerSettings, worker: str, params: Mapping[str, object]) -> None:
        require("mlflow", "mlflow", "MLflow tracking (mlflow_tracking_uri)")
        self.uri = str(settings.mlflow_tracking_uri)
        self.experiment = settings.mlflow_experiment
        self.worker = worker
        self.run_name = f"{worker}-{settings.worker_name}"
        self.params = {k: str(v) for k, v in params.items() if v is not None}
        self.run_id: str | None = None
        self.started = threading.Event()  # set once the run exists (or could not be made)
        self._queue: queue.Queue[Call | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{worker}", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` (name: value) at ``step``, now."""
        stamp = int(time.time() * 1000)

        def call(client: Any, run_id: str) -> None:
            from mlflow.entities import Metric

            client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

        self._put(call)

    def _put(self, call: Call) -> None:
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            log.warning("MLflow is behind (%d calls waiting): a record dropped", QUEUE_SIZE)
            TRACKING_ERRORS.labels(self.worker, "dropped").inc()

    def _loop(self) -> None:
        client = None
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            experiment = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                experiment.experiment_id if experiment is not None else client.create_experiment(self.experiment)
            )
            run = client.create_run(experiment_id, run_name=self.run_name, tags={"edgecap.worker": self.worker})
            self.run_id = run.info.run_id
            client.log_batch(self.run_id, params=_params(self.params))
            log.info("MLflow run %s (%s) in experiment %s at %s", self.run_name, self.run_id, self.experiment, self.uri)
        except Exception:
            log.exception("MLflow run not started at %s: this worker is not tracked", self.uri)
            TRACKING_ERRORS.labels(self.worker, "start").inc()
        finally:
            self.started.set()
        while (call := self._queue.get()) is not None:
            if client is None or self.run_id is None:
                continue  # no run: drop (the start failure was counted once)
            try:
                call(client, self.run_id)
            except Exception:
                log.exception("an MLflow call failed")
                TRACKING_ERRORS.labels(self.worker, "call").inc()
        if client is not None and self.run_id is not None:
            try:
                client.set_terminated(self.run_id)
            except Exception:
                log.exception("the MLflow run could not be ended")
                TRACKING_ERRORS.labels(self.worker, "call").inc()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Log what is queued, end the run (finished), and stop the thread (waiting ``timeout_s``)."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("MLflow still behind at shutdown: queued records lost")
        self._thread.join(timeout_s)


class DisagreementLog:
    """The reconciler's share of tracking: every ``mlflow_disagreement_every_s``, each agent's
    draft-to-final disagreement over the finals stored since the last time (:meth:`Store.disagreement`,
    pooled over the agent's edge models) as metrics of the run, one step per period:
    ``disagreement.wer.<agent>`` (the drafts' word errors over the finals' words),
    ``disagreement.drafts_kept.<agent>`` (share of finals where the draft stood) and
    ``disagreement.segments.<agent>``. Agents with no final in a period log nothing for it."""

    def __init__(self, tracker: Tracker, store: Store, every_s: float) -> None:
        self.tracker = tracker
        self.store = store
        self.every_s = every_s
        self.since = time.time()
        self.step = 0

    def tick(self) -> None:
        """Log the period that ended, if one did (called from the reconciler's tick; never raises)."""
        now = time.time()
        if now - self.since < self.every_s:
            return
        try:
            rows = self.store.disagreement(since=self.since)
        except SQLAlchemyError:
            log.exception("disagreement not read for MLflow; the next period covers it")
            TRACKING_ERRORS.labels(self.tracker.worker, "store").inc()
            return
        self.since = now  # finals stored from here on belong to the next period
        metrics = disagreement_metrics(rows)
        if metrics:
            self.tracker.log_metrics(metrics, self.step)
        self.step += 1


def disagreement_metrics(rows: list[Disagreement]) -> dict[str, float]:
    """Metrics of :class:`DisagreementLog` from the store's rows (per agent and edge model)."""
    per_agent: dict[str, list[int]] = {}  # agent: [segments, edits, final words, drafts kept]
    for row in rows:
        totals = per_agent.setdefault(row["agent_id"], [0, 0, 0, 0])
        for i, value in enumerate((row["segments"], row["edits"], row["final_words"], row["drafts_kept"])):
            totals[i] += value
    metrics: dict[str, float] = {}
    for agent, (segments, edits, words, kept) in per_agent.items():
        metrics[f"disagreement.segments.{agent}"] = segments
        if segments:
            metrics[f"disagreement.drafts_kept.{agent}"] = kept / segments
        if words:
            metrics[f"disagreement.wer.{agent}"] = edits / words
    return metrics


def open_disagreement_log(
    settings: WorkerSettings, store: Store, params: Mapping[str, object]
) -> DisagreementLog | None:
    """The reconciler's disagreement log, or None when tracking is off (see :func:`open_tracker`)."""
    tracker = open_tracker(settings, "reconcile", params)
    return None if tracker is None else DisagreementLog(tracker, store, settings.mlflow_disagreement_every_s)


def _params(params: Mapping[str, str]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in params.items()]


def open_tracker(settings: WorkerSettings, worker: str, params: Mapping[str, object]) -> Tracker | None:
    """The worker's tracker, or None when ``mlflow_tracking_uri`` is unset. Raises
    :class:`~runtime.plugins.MissingPackage` (naming the ``mlflow`` extra) if it is set and MLflow is
    not installed."""
    if not settings.mlflow_tracking_uri:
        return None
    return Tracker(settings, worker, params)
