"""The transcription worker with real Whisper tiny.en weights on a real recording, through real Kafka."""

from __future__ import annotations

import json
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

from cloud.asr import TranscriptionEngine, create_engine
from cloud.audio import to_float32
from cloud.settings import WorkerSettings
from cloud.store import Store
from cloud.transcribe import TranscribeWorker
from contracts import Audio, CloudTranscript, DeadLetter, Kafka, Segment, Transcript, decode, encode, new_segment_id
from devtools import SAMPLES_DIR
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

AGENT = "pi-transcribe"

try:
    from devtools.wer import wer
except ImportError:  # pragma: no cover - the shared WER module is another engineer's

    def wer(reference: str, hypothesis: str) -> float:
        ref = "".join(c for c in reference.lower() if c.isalnum() or c.isspace()).split()
        hyp = "".join(c for c in hypothesis.lower() if c.isalnum() or c.isspace()).split()
        d = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            prev, d[0] = d[0], i
            for j, h in enumerate(hyp, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
        return d[-1] / max(1, len(ref))


def utterances() -> list[tuple[str, np.ndarray]]:
    """(reference text, PCM16 samples) of each utterance of the bundled sample."""
    wav_path, meta_path = SAMPLES_DIR / "sample.wav", SAMPLES_DIR / "sample.json"
    if not (wav_path.exists() and meta_path.exists()):
        pytest.skip(f"sample recording missing in {SAMPLES_DIR}")
    meta = json.loads(meta_path.read_text())
    with wave.open(str(wav_path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return [(u["text"], pcm[int(u["start_s"] * 16000) : int(u["end_s"] * 16000)]) for u in meta["utterances"]]


def segment(seq: int, pcm: np.ndarray, sample_rate: int = 16000, channels: int = 1) -> Segment:
    now = time.time()
    return Segment(
        agent_id=AGENT,
        segment_id=new_segment_id(),
        seq=seq,
        started_at=now - pcm.size / sample_rate / channels,
        ended_at=now,
        audio=Audio(sample_rate=sample_rate, channels=channels, data=pcm.astype("<i2").tobytes()),
        draft=Transcript(text="draft", model_id="whisper-tiny.en-int8-onnx", produced_at=now),
    )


@pytest.fixture(scope="module")
def broker() -> Iterator[Tansu]:
    """A broker of this module's own, so that no other test's segments join (and reshape) its batches."""
    with Tansu() as b:
        yield b


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> TranscriptionEngine:
    hf = models_dir / "tiny.en" / "hf"
    if not (hf / "config.json").exists():
        pytest.skip(f"no Hugging Face checkpoint at {hf}: run `edgecap models prepare`")
    return create_engine(WorkerSettings(engine="transformers", model_dir=hf, threads=2, beam_size=1))


def read(broker: Tansu, topic: str, want: int, ids: set[str] | None, timeout_s: float) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if ids is None or decode(msg.value()).segment_id in ids:
                got.append(msg.value())
    finally:
        consumer.close()
    return got


@pytest.mark.models
def test_engine_transcribes_a_batch_in_order(engine: TranscriptionEngine) -> None:
    items = utterances()[:3]
    audios = [to_float32(Audio(sample_rate=16000, data=pcm.tobytes())) for _, pcm in items]
    audios.insert(1, np.zeros(0, dtype=np.float32))  # an empty segment gives empty text, not an error
    out = engine.transcribe_batch(audios)
    assert [t.text for t in out][1] == ""
    del out[1]
    for (reference, _), t in zip(items, out, strict=True):
        assert wer(reference, t.text) <= 0.15, (reference, t.text)
        assert t.model_id.startswith("whisper-tiny.en@hf-fp32:") and t.language == "en"


def start_worker(
    broker: Tansu, engine: TranscriptionEngine
) -> tuple[TranscribeWorker, threading.Event, threading.Thread]:
    """A transcription worker in a thread on its own group (batches of 8 within 0.5 s), attempt
    counts in memory; the caller sets the event and joins the thread."""
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap),
        group=f"edgecap-transcribe-test-{uuid.uuid4()}",
        session_timeout_ms=2000,
        topic_partitions=2,
        batch_size=8,
        max_wait_ms=500,
        worker_name="test-worker",
    )
    worker = TranscribeWorker(settings, engine, Store("sqlite://"))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return worker, stop, thread


@pytest.mark.integration
@pytest.mark.models
def test_worker_batches_segments_and_dead_letters_garbage(broker: Tansu, engine: TranscriptionEngine) -> None:
    items = utterances()
    first = [segment(i, pcm) for i, (_, pcm) in enumerate(items[:3])]
    garbage = b"\x00\x01 definitely not a segment"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(Kafka.SEGMENTS, value=garbage, key=AGENT.encode())
    for s in first:
        producer.produce(Kafka.SEGMENTS, value=encode(s), key=AGENT.encode())
    assert producer.flush(10) == 0

    worker, stop, thread = start_worker(broker, engine)
    try:
        ids = {s.segment_id for s in first}
        out = [decode(v, CloudTranscript) for v in read(broker, Kafka.TRANSCRIPTS, 3, ids, 60)]
        assert sorted(t.segment_id for t in out) == sorted(ids)
        by_id = {t.segment_id: t for t in out}
        for s, (reference, _) in zip(first, items[:3], strict=True):
            t = by_id[s.segment_id]
            assert (t.agent_id, t.seq, t.started_at, t.worker) == (AGENT, s.seq, s.started_at, "test-worker")
            assert wer(reference, t.transcript.text) <= 0.15, (reference, t.transcript.text)
        assert len({t.transcript.produced_at for t in out}) == 1, "all three came from one engine call"

        dead = [decode(v, DeadLetter) for v in read(broker, Kafka.DEADLETTER, 1, None, 20)]
        assert len(dead) == 1 and dead[0].payload == garbage and dead[0].reason == "bad_json"
        assert dead[0].agent_id == AGENT and Kafka.SEGMENTS in dead[0].source
        assert worker.tally["dead_letter"] == 1

        # The worker goes on: a later segment, 8 kHz stereo this time, is transcribed too.
        reference, pcm16k = items[3]
        pcm8k = pcm16k[::2]
        late = segment(3, np.repeat(pcm8k, 2), sample_rate=8000, channels=2)
        producer.produce(Kafka.SEGMENTS, value=encode(late), key=AGENT.encode())
        assert producer.flush(10) == 0
        got = [decode(v, CloudTranscript) for v in read(broker, Kafka.TRANSCRIPTS, 1, {late.segment_id}, 60)]
        assert len(got) == 1 and wer(reference, got[0].transcript.text) <= 0.25, got
        assert worker.tally["transcribed"] == 4
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def first_dead_letter_of(broker: Tansu, payload: bytes, timeout_s: float) -> DeadLetter:
    """The first dead letter on ``edgecap.deadletter`` whose payload is ``payload`` (others, from
    earlier tests on this module's broker, are passed over)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"test-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([Kafka.DEADLETTER])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if (letter := decode(msg.value(), DeadLetter)).payload == payload:
                return letter
    finally:
        consumer.close()
    raise AssertionError(f"no dead letter of that payload within {timeout_s} s")


@pytest.mark.integration
@pytest.mark.models
def test_worker_reads_opus_and_flac_and_dead_letters_audio_that_does_not_decode(engine: TranscriptionEngine) -> None:
    """Issue 9 §6: what agents send by default (Ogg Opus) and FLAC are transcribed as well as PCM; a
    well-formed segment whose audio does not decode is dead-lettered as bad_audio, counted, and the
    rest of its batch goes on. A broker of its own: the counts are this test's alone."""
    with Tansu() as broker:
        opus_flac_and_corrupt_through(broker, engine)


def opus_flac_and_corrupt_through(broker: Tansu, engine: TranscriptionEngine) -> None:
    from runtime.audiocodec import to_audio

    items = utterances()
    opus, flac = (
        segment(10 + i, pcm).model_copy(update={"audio": to_audio(pcm.tobytes(), 16000, 1, codec)})
        for i, (codec, (_, pcm)) in enumerate(zip(("opus", "flac"), items[:2], strict=True))
    )
    good = opus.audio.data
    damaged = good[:200] + bytes(b ^ 0xFF for b in good[200:600]) + good[600:]
    corrupt = segment(12, items[2][1]).model_copy(update={"audio": opus.audio.model_copy(update={"data": damaged})})
    corrupt_raw = encode(corrupt)
    assert decode(corrupt_raw, Segment).audio.codec == "opus"  # a valid message: only its audio is bad
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
    for raw in (corrupt_raw, encode(opus), encode(flac)):
        producer.produce(Kafka.SEGMENTS, value=raw, key=AGENT.encode())
    assert producer.flush(10) == 0

    worker, stop, thread = start_worker(broker, engine)
    try:
        ids = {opus.segment_id, flac.segment_id}
        transcripts = [decode(v, CloudTranscript) for v in read(broker, Kafka.TRANSCRIPTS, 2, ids, 60)]
        out = {t.segment_id: t for t in transcripts}
        assert set(out) == ids
        for s, (reference, _) in zip((opus, flac), items[:2], strict=True):
            assert wer(reference, out[s.segment_id].transcript.text) <= 0.15, (reference, out[s.segment_id])
        letter = first_dead_letter_of(broker, corrupt_raw, 20)
        assert letter.reason == "bad_audio" and "opus audio does not decode" in letter.detail, letter
        assert worker.tally["dead_letter"] == 1 and worker.tally["transcribed"] == 2
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
