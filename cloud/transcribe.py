"""The transcription worker: segments from Kafka, batched through a Whisper engine, transcripts back.

Consumer group ``edgecap-transcribe`` on ``edgecap.segments``. Dynamic batching: up to
``batch_size`` segments, or whatever arrived within ``max_wait_ms`` of the first one, sorted by
length (similar lengths decode together), one engine call per batch. Each
:class:`~contracts.CloudTranscript` goes to ``edgecap.transcripts`` keyed by ``agent_id``; offsets
are stored only once every output of the batch is delivered. An undecodable record, or a segment
the engine fails on by itself, becomes a dead letter (counted, offset stored, the worker goes on).
A segment is at fault only if the engine works: when it fails on every segment of a batch (a
batch of one included), it is given a second of silence, and if that fails too the engine is
broken (a dead GPU, say): nothing is dead-lettered, the worker reports unhealthy
(``edgecap_worker_healthy`` 0) and retries the batch after a growing pause. If delivery fails, or
the store does not answer, the batch is retried the same way.

A segment that kills the process (a poison input: the engine segfaults or runs out of memory on it)
cannot be caught by any of that. Each segment's attempt is counted in the store while the engine
has it and forgotten when the call returns, so a count that remains means the process died in the
call; such a segment is transcribed alone after the restart, and dead-lettered (``poison``) once it
was in hand ``max_attempts`` times. The segments that shared its batch are each counted once.

A GPU that runs out of memory on a batch (:func:`is_out_of_memory`) does not fail its segments: the
batch is split in halves and each is tried again, down to single segments (a segment that still
runs out of memory alone fails as any other). Each split is counted (``oom_splits``), and the
worker takes smaller batches from then on: its effective batch size drops to the largest half
that went through, and grows back by one segment after every ``OOM_RECOVERY_BATCHES`` full batches
in a row without running out of memory, up to ``batch_size`` (additive increase, multiplicative
decrease: memory needs change with segment lengths, so it probes upwards slowly).

SIGTERM sets the stop event, which :class:`~runtime.kafka.BatchWorker` reads only between batches:
the batch in hand is transcribed, published and its offsets committed before the worker exits
(``tests/cloud/test_sigterm.py``). Metrics: :mod:`cloud.metrics`; with ``mlflow_tracking_uri`` set,
a run per start and per-batch metrics in MLflow (:mod:`cloud.tracking`).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from confluent_kafka import Message
from sqlalchemy.exc import SQLAlchemyError

from cloud.asr import TranscriptionEngine, create_engine
from cloud.attempts import dead_letter_poison, in_hand, triage
from cloud.audio import SAMPLE_RATE, AudioCodecError, to_float32
from cloud.metrics import (
    AUDIO_SECONDS,
    BATCH_FILL,
    BATCH_SECONDS,
    BATCH_SIZE,
    EFFECTIVE_BATCH_SIZE,
    ENGINE_SECONDS,
    OLDEST_SEGMENT_AGE,
    PADDING_RATIO,
    PADDING_SECONDS,
    REAL_TIME_FACTOR,
)
from cloud.settings import WorkerSettings
from cloud.store import SegmentKey, Store
from cloud.tracking import open_tracker, weights_hash
from contracts import CloudTranscript, DecodeError, Kafka, Reason, Segment, Transcript, decode, encode
from runtime.kafka import BatchWorker, Publisher

log = logging.getLogger(__name__)


def _key(segment: Segment) -> SegmentKey:
    return (segment.agent_id, segment.segment_id)


DEFAULT_GROUP = "edgecap-transcribe"
PROBE_SAMPLES = SAMPLE_RATE  # the probe that tells a broken engine from a bad segment: 1 s of silence
OOM_RECOVERY_BATCHES = 50  # full batches without running out of memory before the batch size grows by one
OOM_MARKERS = (
    "out of memory",  # CUDA ("CUDA out of memory", "CUDA error: out of memory"), CTranslate2, cuDNN
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda_error_out_of_memory",
    "failed to allocate",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an engine error is the device (or host) running out of memory, which a smaller batch
    may avoid: torch's ``OutOfMemoryError``, Python's ``MemoryError``, or an error whose message (or
    that of its cause) says so as CUDA, cuBLAS, cuDNN and CTranslate2 do. Matched by class name and
    message, so torch need not be imported."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or type(current).__name__ == "OutOfMemoryError":
            return True
        message = str(current).lower()
        if any(marker in message for marker in OOM_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


class TranscribeWorker(BatchWorker):
    """One transcription worker: batches of segments through the engine; :meth:`run` until ``stop``
    is set."""

    name = "transcribe"
    inputs = (Kafka.SEGMENTS,)
    outputs = (Kafka.TRANSCRIPTS, Kafka.DEADLETTER)

    def __init__(
        self, settings: WorkerSettings, engine: TranscriptionEngine | None = None, store: Store | None = None
    ) -> None:
        super().__init__(
            settings.kafka, settings.group or DEFAULT_GROUP, settings.session_timeout_ms, settings.topic_partitions
        )
        self.batch_size = settings.batch_size
        self.max_wait_s = settings.max_wait_ms / 1000
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.store = store or Store(settings.store_url)  # durable attempt counts (poison segments)
        self._full_batches = 0  # in a row without running out of memory, at the effective batch size
        EFFECTIVE_BATCH_SIZE.set(self.batch_size)
        self._in_hand: float | None = None  # the oldest ended_at of the batch in hand
        OLDEST_SEGMENT_AGE.set_function(self._oldest_age)
        self._batches = 0
        self.tracker = open_tracker(settings, self.name, self._tracked_params())

    def _tracked_params(self) -> dict[str, object]:
        model_id = self.engine.model_id
        names = ("beam_size", "compute_type", "device", "batch_size", "max_wait_ms", "max_new_tokens")
        return {
            "engine": type(self.engine).type_key,
            "model_id": model_id,
            "weights_hash": weights_hash(model_id),
            "packing": getattr(self.settings, "packing", None),
            "worker_name": self.settings.worker_name,
        } | {name: getattr(self.settings, name) for name in names}

    def run(self, stop: threading.Event) -> None:
        """:meth:`BatchWorker.run`, then the MLflow run (if any) is ended."""
        try:
            super().run(stop)
        finally:
            if self.tracker is not None:
                self.tracker.close()

    def _oldest_age(self) -> float:
        oldest = self._in_hand
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Transcribe and publish one batch; False if it must be retried."""
        try:
            return self._handle(batch, publisher)
        except SQLAlchemyError:
            log.exception("the store (attempt counts) failed; the batch will be retried")
            return False
        finally:
            self._in_hand = None

    def _handle(self, batch: list[Message], publisher: Publisher) -> bool:
        items: list[tuple[Message, Segment, np.ndarray]] = []
        for msg in batch:
            try:
                segment = decode(msg.value() or b"", Segment)
            except DecodeError as exc:
                self.dead_letter(publisher, msg, exc.reason, exc.detail)
                continue
            if segment.audio.duration_s > self.settings.max_audio_s:
                detail = f"{segment.audio.duration_s:.1f} s of audio, over max_audio_s {self.settings.max_audio_s:g}"
                self.dead_letter(publisher, msg, Reason.TOO_LARGE, detail)
                continue
            try:
                audio = to_float32(segment.audio)
            except AudioCodecError as exc:  # not the audio it declares: the segment's fault, not the engine's
                self.dead_letter(publisher, msg, Reason.BAD_AUDIO, str(exc))
                continue
            items.append((msg, segment, audio))
        items.sort(key=lambda item: item[2].size)
        if items:
            self._in_hand = min(segment.ended_at for _, segment, _ in items)

        # a segment already counted was in an engine call that never returned (the process died):
        # alone from now on, so that only the segment at fault reaches max_attempts
        sorted_ = triage(self.store, items, lambda item: _key(item[1]), self.settings.max_attempts)
        done: list[tuple[Message, Segment, Transcript | None]] = []
        poison = dead_letter_poison(self, publisher, sorted_.poison, "transcribing")
        for (msg, segment, audio), died in sorted_.suspects:
            log.warning("segment %s of %s was in hand when a worker died (%d): transcribing it alone",
                        segment.segment_id, segment.agent_id, died)  # fmt: skip
            self.tally.add("suspect")
            done.append((msg, segment, self._attempt([(segment, audio)])[0]))
        if sorted_.fresh:
            results = self._attempt([(segment, audio) for _, segment, audio in sorted_.fresh])
            done += [(msg, segment, r) for (msg, segment, _), r in zip(sorted_.fresh, results, strict=True)]

        results = [r for _, _, r in done]
        if any(r is None for r in results) and not self._engine_works(results):
            # a broken engine (a dead GPU), not bad segments: dead-letter nothing, retry the batch later
            log.error("the engine fails on everything: %d segments wait, retrying later", len(items))
            self.tally.add("engine_down")
            return False
        for msg, segment, transcript in done:
            if transcript is None:
                self.dead_letter(publisher, msg, Reason.BAD_AUDIO, "the engine failed on this segment")
                continue
            out = CloudTranscript(**segment.header(), transcript=transcript, worker=self.settings.worker_name)
            publisher.send(Kafka.TRANSCRIPTS, segment.agent_id, encode(out))
            self.tally.add("transcribed")
        if not publisher.deliver():
            return False
        self.store.forget_attempts(poison)
        return True

    def _attempt(self, items: list[tuple[Segment, np.ndarray]]) -> list[Transcript | None]:
        """Transcribe, with each segment's attempt counted durably while the engine has it: a count
        that outlives the call means the process died in it (:mod:`cloud.attempts`)."""
        with in_hand(self.store, [_key(segment) for segment, _ in items]):
            return self._transcribe([audio for _, audio in items])

    def _engine_works(self, results: list[Transcript | None]) -> bool:
        """Whether the engine works, so that the segments it failed on are at fault: it transcribed
        another segment of the batch, or a probe (a second of silence) now."""
        if any(r is not None for r in results):
            return True
        try:
            self.engine.transcribe_batch([np.zeros(PROBE_SAMPLES, dtype=np.float32)])
        except Exception as exc:
            log.warning("the engine fails on a second of silence too: %r", exc)
            return False
        return True

    def _transcribe(self, audios: list[np.ndarray]) -> list[Transcript | None]:
        """The engine's transcripts (:meth:`_run`), with the batch's metrics."""
        if not audios:
            return []
        started = time.monotonic()
        splits_before = self.tally["oom_splits"]
        padding = [0.0]
        transcripts = self._run(audios, padding)
        elapsed = time.monotonic() - started
        if self.tally["oom_splits"] == splits_before:
            self._grow(len(audios))
        self._observe(len(audios), sum(a.size for a in audios) / SAMPLE_RATE, padding[0], elapsed)
        return transcripts

    def _run(self, audios: list[np.ndarray], padding: list[float]) -> list[Transcript | None]:
        """The engine's transcripts of ``audios``; ``padding[0]`` adds up the padding the engine
        reports. Out of memory: each half again (recursively). Any other failure: each segment
        alone, None where it still fails."""
        try:
            transcripts: list[Transcript | None] = list(self.engine.transcribe_batch(audios))
            padding[0] += float(getattr(self.engine, "last_padding_s", 0.0))
            return transcripts
        except Exception as exc:
            if is_out_of_memory(exc) and len(audios) > 1:
                half = len(audios) // 2
                log.warning("out of memory on a batch of %d: trying halves of %d and %d (%s)",
                            len(audios), half, len(audios) - half, exc)  # fmt: skip
                self.tally.add("oom_splits")
                self._shrink(len(audios) - half)
                return self._run(audios[:half], padding) + self._run(audios[half:], padding)
            if len(audios) == 1:
                log.exception("the engine failed on a %.1f s segment", audios[0].size / SAMPLE_RATE)
                return [None]
            log.exception("the engine failed on a batch of %d: trying each segment alone", len(audios))
        return [self._run([audio], padding)[0] for audio in audios]

    def _shrink(self, size: int) -> None:
        """Take at most ``size`` segments per batch (never more than now), after running out of memory."""
        self._full_batches = 0
        if size < self.batch_size:
            log.warning("effective batch size %d -> %d after running out of memory", self.batch_size, size)
            self.batch_size = max(1, size)
            EFFECTIVE_BATCH_SIZE.set(self.batch_size)

    def _grow(self, size: int) -> None:
        """After a batch that went through whole: a full one counts towards growing back by one."""
        if self.batch_size >= self.settings.batch_size or size < self.batch_size:
            return
        self._full_batches += 1
        if self._full_batches >= OOM_RECOVERY_BATCHES:
            self._full_batches = 0
            self.batch_size += 1
            EFFECTIVE_BATCH_SIZE.set(self.batch_size)
            log.info("effective batch size back up to %d", self.batch_size)

    def _observe(self, size: int, audio_s: float, padding_s: float, elapsed: float) -> None:
        """Count one batch: Prometheus, the log, and MLflow when tracking."""
        BATCH_SIZE.observe(size)
        BATCH_FILL.observe(size / self.settings.batch_size)
        BATCH_SECONDS.observe(elapsed)
        ENGINE_SECONDS.inc(elapsed)
        AUDIO_SECONDS.inc(audio_s)
        PADDING_SECONDS.inc(padding_s)
        rtf = elapsed / audio_s if audio_s > 0 else 0.0
        padding_ratio = padding_s / audio_s if audio_s > 0 else 0.0
        if audio_s > 0:
            REAL_TIME_FACTOR.observe(rtf)
            PADDING_RATIO.observe(padding_ratio)
        self.tally.add("batches")
        self._batches += 1
        log.info("batch of %d segments (%.1f s of audio, %.1f s of padding) in %.2f s", size, audio_s, padding_s,
                 elapsed)  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_metrics(
                {
                    "real_time_factor": rtf,
                    "batch_size": size,
                    "batch_fill": size / self.settings.batch_size,
                    "padding_per_audio_s": padding_ratio,
                    "audio_s": audio_s,
                    "engine_s": elapsed,
                },
                self._batches,
            )
