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
"""

from __future__ import annotations

import logging
import time

import numpy as np
from confluent_kafka import Message
from sqlalchemy.exc import SQLAlchemyError

from cloud.asr import TranscriptionEngine, create_engine
from cloud.audio import SAMPLE_RATE, AudioCodecError, to_float32
from cloud.metrics import BATCH_SECONDS, BATCH_SIZE
from cloud.settings import WorkerSettings
from cloud.store import SegmentKey, Store
from contracts import CloudTranscript, DecodeError, Kafka, Reason, Segment, Transcript, decode, encode
from runtime.kafka import BatchWorker, Publisher

log = logging.getLogger(__name__)


def _key(segment: Segment) -> SegmentKey:
    return (segment.agent_id, segment.segment_id)

DEFAULT_GROUP = "edgecap-transcribe"
PROBE_SAMPLES = SAMPLE_RATE  # the probe that tells a broken engine from a bad segment: 1 s of silence


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

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Transcribe and publish one batch; False if it must be retried."""
        try:
            return self._handle(batch, publisher)
        except SQLAlchemyError:
            log.exception("the store (attempt counts) failed; the batch will be retried")
            return False

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

        # a segment already counted was in an engine call that never returned (the process died):
        # alone from now on, so that only the segment at fault reaches max_attempts
        counts = self.store.attempts([_key(segment) for _, segment, _ in items])
        fresh = [item for item in items if _key(item[1]) not in counts]
        done: list[tuple[Message, Segment, Transcript | None]] = []
        poison: list[SegmentKey] = []
        for msg, segment, audio in (item for item in items if _key(item[1]) in counts):
            died = counts[_key(segment)]
            if died >= self.settings.max_attempts:
                log.error("segment %s of %s: the worker died %d times with it in hand: dead-lettered",
                          segment.segment_id, segment.agent_id, died)  # fmt: skip
                self.dead_letter(publisher, msg, Reason.POISON, f"the worker died {died} times transcribing it")
                self.tally.add("poison")
                poison.append(_key(segment))
                continue
            log.warning("segment %s of %s was in hand when a worker died (%d): transcribing it alone",
                        segment.segment_id, segment.agent_id, died)  # fmt: skip
            self.tally.add("suspect")
            done.append((msg, segment, self._attempt([(segment, audio)])[0]))
        if fresh:
            results = self._attempt([(segment, audio) for _, segment, audio in fresh])
            done += [(msg, segment, r) for (msg, segment, _), r in zip(fresh, results, strict=True)]

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
        that outlives the call means the process died in it (:meth:`Store.take_attempts`)."""
        keys = [_key(segment) for segment, _ in items]
        self.store.take_attempts(keys)
        try:
            return self._transcribe([audio for _, audio in items])
        finally:
            self.store.forget_attempts(keys)  # the call returned: whatever it gave, nothing died in it

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
