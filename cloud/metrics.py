"""Prometheus metrics of the cloud workers, served with ``metrics_port``.

Every Kafka worker counts its records by outcome in ``edgecap_worker_records_total``
(:class:`runtime.kafka.Tally`); the transcriber adds its batch sizes and engine times here.
"""

from __future__ import annotations

from prometheus_client import Histogram, start_http_server

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


def serve(port: int | None) -> None:
    """Expose the metrics over HTTP when a port is configured."""
    if port is not None:
        start_http_server(port)
