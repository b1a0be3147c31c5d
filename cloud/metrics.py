"""Prometheus metrics of the cloud workers, served with ``metrics_port``.

Every Kafka worker counts its records by outcome in ``edgecap_worker_records_total``
(:class:`runtime.kafka.Tally`) and shows its consumer lag per partition in
``edgecap_worker_consumer_lag`` (:class:`runtime.kafka.ConsumerLag`). The transcriber adds here
what tells whether its batches pay: their size and fill, the engine's time, the real-time factor,
the padding the engine decoded per second of audio, its effective batch size after a GPU ran out of
memory, and how old the oldest segment in hand is.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BATCH_SIZE = Histogram(
    "edgecap_transcribe_batch_segments",
    "Segments per batch (one batch: what one poll brought, transcribed together).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_FILL = Histogram(
    "edgecap_transcribe_batch_fill",
    "Segments per batch over the configured batch_size (1: full; low: max_wait_ms ends batches early).",
    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
)
BATCH_SECONDS = Histogram(
    "edgecap_transcribe_batch_seconds",
    "Engine time per batch in seconds.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REAL_TIME_FACTOR = Histogram(
    "edgecap_transcribe_real_time_factor",
    "Engine seconds per audio second, per batch (below 1: faster than real time).",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
PADDING_RATIO = Histogram(
    "edgecap_transcribe_padding_ratio",
    "Padded seconds the engine decoded per audio second, per batch (Whisper pads to 30 s windows; "
    "packing lowers it).",
    buckets=(0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
AUDIO_SECONDS = Counter(
    "edgecap_transcribe_audio_seconds_total",
    "Seconds of audio transcribed (rate of padding_seconds over this: padding per audio second).",
)
PADDING_SECONDS = Counter(
    "edgecap_transcribe_padding_seconds_total",
    "Seconds of padding (silence up to the engine's windows) the engine decoded besides the audio.",
)
ENGINE_SECONDS = Counter(
    "edgecap_transcribe_engine_seconds_total",
    "Seconds spent in the engine (rate over audio_seconds: the real-time factor).",
)
EFFECTIVE_BATCH_SIZE = Gauge(
    "edgecap_transcribe_effective_batch_size",
    "The most segments the transcriber takes per batch now: batch_size, lowered after the GPU ran "
    "out of memory and raised back slowly.",
)
OLDEST_SEGMENT_AGE = Gauge(
    "edgecap_transcribe_oldest_segment_age_seconds",
    "While a batch is in hand: now minus the oldest ended_at (the device's clock) of its segments, "
    "i.e. how long the oldest segment being transcribed has waited since its utterance ended; 0 "
    "while no batch is in hand (records waiting then show in edgecap_worker_consumer_lag).",
)


def serve(port: int | None) -> None:
    """Expose the metrics over HTTP when a port is configured."""
    if port is not None:
        start_http_server(port)
