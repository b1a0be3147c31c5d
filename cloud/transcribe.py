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
import time

import numpy as np
from confluent_kafka import Message

from cloud.asr import TranscriptionEngine, create_engine
from cloud.audio import SAMPLE_RATE, to_float32
from cloud.metrics import BATCH_SECONDS, BATCH_SIZE
from cloud.settings import WorkerSettings
from contracts import CloudTranscript, DecodeError, Kafka, Reason, Segment, Transcript, decode, encode
from runtime.kafka import BatchWorker, Publisher

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgecap-transcribe"


class TranscribeWorker(BatchWorker):
    """One transcription worker: batches of segments through the engine; :meth:`run` until ``stop``
    is set."""

    name = "transcribe"
    inputs = (Kafka.SEGMENTS,)
    outputs = (Kafka.TRANSCRIPTS, Kafka.DEADLETTER)

    def __init__(self, settings: WorkerSettings, engine: TranscriptionEngine | None = None) -> None:
        super().__init__(
            settings.kafka, settings.group or DEFAULT_GROUP, settings.session_timeout_ms, settings.topic_partitions
        )
        self.batch_size = settings.batch_size
        self.max_wait_s = settings.max_wait_ms / 1000
        self.settings = settings
        self.engine = engine or create_engine(settings)

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Transcribe and publish one batch; False if it must be retried."""
        items: list[tuple[Message, Segment, np.ndarray]] = []
        for msg in batch:
            try:
                segment = decode(msg.value() or b"", Segment)
            except DecodeError as exc:
                self.dead_letter(publisher, msg, exc.reason, exc.detail)
                continue
            items.append((msg, segment, to_float32(segment.audio)))
        items.sort(key=lambda item: item[2].size)

        results = self._transcribe([audio for _, _, audio in items])
        if items and all(r is None for r in results) and len(items) > 1:
            log.error("the engine failed on all %d segments: retrying the batch later", len(items))
            return False
        for (msg, segment, _), transcript in zip(items, results, strict=True):
            if transcript is None:
                self.dead_letter(publisher, msg, Reason.BAD_AUDIO, "the engine failed on this segment")
                continue
            out = CloudTranscript(**segment.header(), transcript=transcript, worker=self.settings.worker_name)
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
