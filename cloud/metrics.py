"""Prometheus metrics of the cloud workers (served with ``metrics_port``), plus per-instance counts."""

from __future__ import annotations

from collections import Counter as Counts

from prometheus_client import Counter, Histogram, start_http_server

RECORDS = Counter(
    "edgecap_worker_records_total",
    "Kafka records handled by a cloud worker, by worker and outcome.",
    ["worker", "outcome"],
)
BATCH_SIZE = Histogram(
    "edgecap_transcribe_batch_segments",
    "Segments per engine call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SECONDS = Histogram(
    "edgecap_transcribe_batch_seconds",
    "Engine time per batch in seconds.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class Tally:
    """Counts of one worker instance (read by tests and logs) mirrored into Prometheus."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.counts: Counts[str] = Counts()

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        RECORDS.labels(self.worker, outcome).inc(n)

    def __getitem__(self, outcome: str) -> int:
        return self.counts[outcome]


def serve(port: int | None) -> None:
    """Expose the metrics over HTTP when a port is configured."""
    if port is not None:
        start_http_server(port)
