"""The transcription worker: segments from Kafka, batched through a Whisper engine, transcripts back.

Consumer group ``edgecap-transcribe`` on ``edgecap.segments``. Dynamic batching: up to
``batch_size`` segments, or whatever arrived within ``max_wait_ms`` of the first one, sorted by
length (similar lengths decode together), one engine call per batch. Each
:class:`~contracts.CloudTranscript` goes to ``edgecap.transcripts`` keyed by ``agent_id``; offsets
are stored only once every output of the batch is delivered. An undecodable record, or a segment
the engine fails on by itself, becomes a dead letter (counted, offset stored, the worker goes on).
If delivery fails or every segment fails (the engine itself is broken), the batch is rewound and
retried after a pause.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from confluent_kafka import Message

from cloud.asr import TranscriptionEngine, create_engine
from cloud.audio import SAMPLE_RATE, to_float32
from cloud.metrics import BATCH_SECONDS, BATCH_SIZE, Tally
from cloud.settings import WorkerSettings
from contracts import CloudTranscript, DecodeError, Kafka, Reason, Segment, Transcript, decode, encode
from runtime.kafka import (
    Publisher,
    dead_letter,
    ensure_topics,
    open_consumer,
    poll_batch,
    rewind,
    store_offsets,
)

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgecap-transcribe"
RETRY_PAUSE_S = 2.0


class TranscribeWorker:
    """One transcription worker; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: WorkerSettings, engine: TranscriptionEngine | None = None) -> None:
        self.settings = settings
        self.group = settings.group or DEFAULT_GROUP
        self.engine = engine or create_engine(settings)
        self.tally = Tally("transcribe")

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        ensure_topics(s.kafka, [Kafka.SEGMENTS, Kafka.TRANSCRIPTS, Kafka.DEADLETTER], s.topic_partitions)
        publisher = Publisher(s.kafka)
        consumer = open_consumer(s.kafka, self.group, [Kafka.SEGMENTS], s.session_timeout_ms)
        try:
            while not stop.is_set():
                batch = poll_batch(consumer, s.batch_size, max_wait_s=s.max_wait_ms / 1000)
                if not batch:
                    continue
                if self.handle(batch, publisher):
                    store_offsets(consumer, batch)
                else:
                    self.tally.add("retried_batch")
                    rewind(consumer, batch)
                    stop.wait(RETRY_PAUSE_S)
        finally:
            publisher.close()
            consumer.close()
            log.info("transcribe worker stopped: %s", dict(self.tally.counts))

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Transcribe and publish one batch; False if it must be retried."""
        items: list[tuple[Message, Segment, np.ndarray]] = []
        for msg in batch:
            try:
                segment = decode(msg.value() or b"", Segment)
            except DecodeError as exc:
                self._dead_letter(publisher, msg, exc.reason.value, exc.detail)
                continue
            items.append((msg, segment, to_float32(segment.audio)))
        items.sort(key=lambda item: item[2].size)

        results = self._transcribe([audio for _, _, audio in items])
        if items and all(r is None for r in results) and len(items) > 1:
            log.error("the engine failed on all %d segments: retrying the batch later", len(items))
            return False
        for (msg, segment, _), transcript in zip(items, results, strict=True):
            if transcript is None:
                self._dead_letter(publisher, msg, Reason.BAD_AUDIO.value, "the engine failed on this segment")
                continue
            out = CloudTranscript(
                agent_id=segment.agent_id,
                segment_id=segment.segment_id,
                seq=segment.seq,
                started_at=segment.started_at,
                ended_at=segment.ended_at,
                transcript=transcript,
                worker=self.settings.worker_name,
            )
            publisher.send(Kafka.TRANSCRIPTS, segment.agent_id, encode(out))
            self.tally.add("transcribed")
        return publisher.deliver()

    def _transcribe(self, audios: list[np.ndarray]) -> list[Transcript | None]:
        """The engine's transcripts; on failure each segment alone, None where it still fails."""
        if not audios:
            return []
        started = time.monotonic()
        try:
            transcripts: list[Transcript | None] = list(self.engine.transcribe_batch(audios))
        except Exception:
            log.exception("the engine failed on a batch of %d: trying each segment alone", len(audios))
            transcripts = []
            for audio in audios:
                try:
                    transcripts.append(self.engine.transcribe_batch([audio])[0])
                except Exception:
                    log.exception("the engine failed on a %.1f s segment", audio.size / SAMPLE_RATE)
                    transcripts.append(None)
        elapsed = time.monotonic() - started
        BATCH_SIZE.observe(len(audios))
        BATCH_SECONDS.observe(elapsed)
        self.tally.add("batches")
        log.info(
            "batch of %d segments (%.1f s of audio) in %.2f s",
            len(audios),
            sum(a.size for a in audios) / SAMPLE_RATE,
            elapsed,
        )
        return transcripts

    def _dead_letter(self, publisher: Publisher, msg: Message, reason: str, detail: str) -> None:
        log.warning("dead letter from %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(), reason, detail)
        letter = dead_letter(msg, reason, detail)
        publisher.send(Kafka.DEADLETTER, letter.agent_id, encode(letter))
        self.tally.add("dead_letter")
