"""The cloud workers fuzzed through Kafka: records produced straight into ``edgecap.segments``,
``edgecap.drafts`` and ``edgecap.transcripts`` (bypassing the bridge, as any producer with rights on
the cluster could) never stop the real transcription worker or the real reconciler. Each record that
does not decode is dead-lettered once, with the reason :func:`contracts.decode` gives, and counted
by reason; each valid one (values at every limit of :mod:`contracts.bounds` included) is processed;
and after every batch a good segment still becomes a final, both worker threads are alive and
healthy.

Hypothesis draws the records: a valid message with one field replaced by any JSON value or by a
value at or just beyond one of its limits, byte-level mutations of a valid message (deep nesting,
invalid UTF-8, lone surrogates, NaN, duplicate keys), arbitrary JSON and bytes, an empty value and a
tombstone (no value); keys that are missing, another agent's, not UTF-8, or 100 KB long; headers.

Each example ends at a barrier: a good record produced to every partition of every input topic, and
waited for at its far end (so a good segment and transcript still flow). A partition is consumed in
order, so once its barrier record is handled everything produced before it was too; the test then
waits for the workers' counts to be exactly what the batch must give (what the transcriber wrote
for it still reaches the reconciler). The workers run on a broker of this module's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fuzzing
import pytest
from cloud_procs import EchoEngine
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fuzzing import big_numbers, json_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from support import make_segment, unique, wait_until

from cloud.audio import AudioCodecError, to_float32
from cloud.reconcile import Reconciler
from cloud.rule import reconcile
from cloud.settings import WorkerSettings
from cloud.store import Store
from cloud.transcribe import TranscribeWorker
from contracts import (
    CloudTranscript,
    DeadLetter,
    DecodeError,
    Draft,
    Final,
    Kafka,
    Reason,
    Segment,
    Transcript,
    decode,
    encode,
    new_segment_id,
)
from contracts import bounds as b
from contracts.bounds import clip
from contracts.messages import DEFAULT_MAX_BYTES
from devtools.brokers import Tansu
from runtime.audiocodec import to_audio
from runtime.kafka import RECORD_OVERHEAD_BYTES, BatchWorker
from runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration

AGENT = unique("kfuzz")
NOW = time.time()
INPUTS = (Kafka.SEGMENTS, Kafka.DRAFTS, Kafka.TRANSCRIPTS)


def _transcript(text: str, model_id: str = "cloud-model") -> Transcript:
    return Transcript(text=text, model_id=model_id, produced_at=NOW)


_SEGMENT = make_segment(AGENT, 7)  # drawn once: hypothesis needs the same bases in every example
BASES: dict[str, dict[str, Any]] = {
    Kafka.SEGMENTS: json.loads(encode(_SEGMENT)),
    Kafka.DRAFTS: json.loads(encode(Draft.of(_SEGMENT))),
    Kafka.TRANSCRIPTS: json.loads(
        encode(CloudTranscript(**_SEGMENT.header(), transcript=_transcript("cloud words"), worker="w"))
    ),
}


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of a message, nested ones included (a dict is a field too)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    return out


FIELDS = {topic: _paths(base) for topic, base in BASES.items()}

# (field, value) at a limit (valid) and just beyond it (refused); a field a message lacks is skipped
HEADER_LIMITS: list[tuple[str, Any]] = [
    ("seq", 0), ("seq", b.MAX_INT), ("seq", b.MAX_INT + 1), ("seq", -1), ("seq", 2**64),
    ("agent_id", "a" * 64), ("agent_id", "a" * 65), ("agent_id", "-lead"), ("agent_id", "pi/../x"),
    ("segment_id", "s" * 128), ("segment_id", "s" * 129), ("segment_id", "id with space"),
    ("started_at", b.EARLIEST_TIME), ("started_at", -1e-6),
    ("ended_at", NOW + b.FUTURE_MARGIN_S - 3600), ("ended_at", NOW + b.FUTURE_MARGIN_S + 3600),
    ("ended_at", 1e308), ("ended_at", 10**400),
]  # fmt: skip
WORD = {"word": "w", "start": 0, "end": 1}
TEXT_LIMITS: list[tuple[str, Any]] = [
    ("text", "x" * b.MAX_TEXT_CHARS), ("text", "x" * (b.MAX_TEXT_CHARS + 1)), ("text", "nul\x00here"),
    ("text", "\ud800 lone surrogate"), ("text", ""),
    ("model_id", "m" * b.MAX_NAME_CHARS), ("model_id", "m" * (b.MAX_NAME_CHARS + 1)),
    ("language", "l" * b.MAX_LANGUAGE_CHARS), ("language", "l" * (b.MAX_LANGUAGE_CHARS + 1)),
    ("produced_at", b.EARLIEST_TIME), ("produced_at", NOW + b.FUTURE_MARGIN_S + 3600),
    ("segments", [{"start": 0, "end": 1, "text": "x"}] * b.MAX_SPANS),
    ("segments", [{"start": 0, "end": 1, "text": "x"}] * (b.MAX_SPANS + 1)),
    # the most text a transcript may carry within the decoder's byte limit: its final is bigger
    # than Kafka's record limit
    ("segments", [{"start": 0, "end": 1, "text": "y" * 3000}] * b.MAX_SPANS),
    ("segments", [{"start": 0, "end": 1, "text": "x", "words": [WORD] * b.MAX_WORDS}]),
    ("segments", [{"start": 0, "end": 1, "text": "x", "words": [WORD] * (b.MAX_WORDS + 1)}]),
    ("segments", [{"start": 0, "end": 1, "text": "x", "words": [WORD | {"word": "w" * (b.MAX_WORD_CHARS + 1)}]}]),
]  # fmt: skip
AUDIO_LIMITS: list[tuple[str, Any]] = [
    ("sample_rate", b.SAMPLE_RATES_HZ[0]), ("sample_rate", b.SAMPLE_RATES_HZ[1]),
    ("sample_rate", b.SAMPLE_RATES_HZ[0] - 1), ("sample_rate", b.SAMPLE_RATES_HZ[1] + 1),
    ("channels", b.MAX_CHANNELS), ("channels", b.MAX_CHANNELS + 1), ("channels", 0),
    ("samples", 1600), ("samples", b.MAX_AUDIO_SAMPLES), ("samples", b.MAX_AUDIO_SAMPLES + 1),
    ("codec", "opus"), ("codec", "flac"), ("codec", "mp3"), ("data", ""), ("data", "not base64!"),
]  # fmt: skip

_PCM = _SEGMENT.audio.data
CODED_AUDIO = [
    json.loads(to_audio(_PCM, 16000, 1, "flac").model_dump_json()),  # real FLAC and Opus: transcribed
    json.loads(to_audio(_PCM, 16000, 1, "opus").model_dump_json()),
    json.loads(to_audio(_PCM, 16000, 2, "flac").model_dump_json()),
    # what the message declares is not what the data holds: dead-lettered as bad_audio
    json.loads(to_audio(_PCM, 16000, 1, "flac").model_dump_json()) | {"samples": 1599},
    json.loads(to_audio(_PCM, 16000, 1, "opus").model_dump_json()) | {"sample_rate": 48000},
    json.loads(to_audio(_PCM, 16000, 1, "flac").model_dump_json()) | {"codec": "opus"},
    {"codec": "opus", "sample_rate": 16000, "samples": 1600, "data": json.loads(encode(_SEGMENT))["audio"]["data"]},
    {"codec": "flac", "sample_rate": 16000, "samples": 0, "data": ""},
]


def _limit_edits(topic: str) -> list[tuple[tuple[str, ...], Any]]:
    inner = {"segments": "draft", "drafts": "draft", "transcripts": "transcript"}[topic.split(".")[1]]
    edits: list[tuple[tuple[str, ...], Any]] = [((name,), value) for name, value in HEADER_LIMITS]
    edits += [((inner, name), value) for name, value in TEXT_LIMITS]
    if topic == Kafka.SEGMENTS:
        edits += [(("audio", name), value) for name, value in AUDIO_LIMITS]
        edits += [(("audio",), audio) for audio in CODED_AUDIO]
    if topic == Kafka.TRANSCRIPTS:
        edits += [(("worker",), "w" * b.MAX_NAME_CHARS), (("worker",), "w" * (b.MAX_NAME_CHARS + 1))]
    return edits


LIMITS: dict[str, list[tuple[tuple[str, ...], Any]]] = {topic: _limit_edits(topic) for topic in INPUTS}



def _dumps(message: dict[str, Any]) -> bytes:
    # lone surrogates are legal in JSON text (\ud800): keep them escaped, as an attacker would send them
    return json.dumps(message).encode()


def _replace(topic: str, path: tuple[str, ...], value: Any) -> bytes:
    message = json.loads(json.dumps(BASES[topic]))
    target = message
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return _dumps(message)


@st.composite
def one_field_replaced(draw: st.DrawFn, topic: str) -> bytes:
    return _replace(topic, draw(st.sampled_from(FIELDS[topic])), draw(json_values | big_numbers))


@st.composite
def at_a_limit(draw: st.DrawFn, topic: str) -> bytes:
    path, value = draw(st.sampled_from(LIMITS[topic]))
    return _replace(topic, path, value)


def mutated(topic: str) -> st.SearchStrategy[bytes]:
    return fuzzing.mutated(_dumps(BASES[topic]), [b'"seq":1,', b'"schema":"edgecap.final.v1",'])


@dataclass(frozen=True)
class Record:
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    def fresh(self) -> Record:
        """The same record about a segment never seen before: the bases' segment id, wherever it is
        left in the bytes, replaced by a new one (of the same length), so that every valid record
        gets its own final instead of counting as a duplicate of an earlier example's."""
        if self.value is None:
            return self
        value = self.value.replace(_SEGMENT.segment_id.encode(), new_segment_id().encode())
        return Record(self.topic, value, self.key, self.headers)

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep megabytes out of it
        value = None if self.value is None else self.value[:120] + (b"..." if len(self.value) > 120 else b"")
        return f"Record({self.topic}, {value!r}, key={(self.key or b'')[:40]!r}, headers={len(self.headers)})"


keys = st.none() | st.just(AGENT.encode()) | st.just(b"pi-someone-else") | st.binary(max_size=40) | st.just(
    b"\xff" * 100_000
)
headers = st.just(()) | st.lists(
    st.tuples(st.text(max_size=20), st.binary(max_size=50) | st.just(b"h" * 100_000)), max_size=3
).map(tuple)


@st.composite
def records(draw: st.DrawFn) -> Record:
    topic = draw(st.sampled_from(INPUTS))
    value = draw(
        one_field_replaced(topic)
        | at_a_limit(topic)
        | mutated(topic)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=200)
        | st.sampled_from([b"", None])
    )
    return Record(topic, value, draw(keys), draw(headers))


# --- what each worker must make of a record ----------------------------------------------------


@dataclass
class Expected:
    """The outcomes a batch must have, per worker: dead letters by reason, and counted outcomes."""

    max_final_bytes: int  # the reconciler's record limit: a larger final goes without its spans
    letters: dict[str, Reason] = field(default_factory=dict)  # source (topic[partition]@offset) -> reason
    finals: set[str] = field(default_factory=set)  # segment ids that must have a final
    transcribe: Counter[str] = field(default_factory=Counter)
    reconcile: Counter[str] = field(default_factory=Counter)

    def add(self, record: Record, where: str) -> None:
        raw = record.value or b""
        if record.topic == Kafka.SEGMENTS:
            try:
                segment = decode(raw, Segment)
            except DecodeError as exc:
                self.letters[where] = exc.reason
                self.transcribe[f"dead_letter:{exc.reason}"] += 1
                self.reconcile["bad_segment"] += 1
                return
            try:
                to_float32(segment.audio)
            except AudioCodecError:
                self.letters[where] = Reason.BAD_AUDIO
                self.transcribe[f"dead_letter:{Reason.BAD_AUDIO}"] += 1
            else:
                self.transcribe["transcribed"] += 1
                self.reconcile["transcript"] += 1  # the worker's transcript comes back to the reconciler
                self.finals.add(segment.segment_id)
            if segment.draft is not None:
                self.reconcile["draft"] += 1
            return
        expect = Draft if record.topic == Kafka.DRAFTS else CloudTranscript
        try:
            message = decode(raw, expect)
        except DecodeError as exc:
            self.letters[where] = exc.reason
            self.reconcile[f"dead_letter:{exc.reason}"] += 1
            return
        if not isinstance(message, CloudTranscript):
            self.reconcile["draft"] += 1
            return
        self.reconcile["transcript"] += 1
        self.finals.add(message.segment_id)
        if len(encode(reconcile(message, None))) > self.max_final_bytes - RECORD_OVERHEAD_BYTES - 64:
            self.reconcile["final_without_spans"] += 1  # a fresh segment: no draft to weigh


def outcomes(worker: BatchWorker) -> Counter[str]:
    """A worker's counts, folded as :class:`Expected` has them."""
    counts = worker.tally.counts
    out: Counter[str] = Counter({f"dead_letter:{r}": n for r, n in worker.tally.dead_letters.items()})
    if isinstance(worker, TranscribeWorker):
        out["transcribed"] = counts["transcribed"]
    else:
        out["bad_segment"] = counts["bad_segment"]
        out["draft"] = counts["draft"] + counts["duplicate_draft"]
        out["transcript"] = counts["final"] + counts["duplicate_transcript"] + counts["republished_final"]
        out["final_without_spans"] = counts["final_without_spans"]
    return +out


# --- the workers and what they write -----------------------------------------------------------


class Outputs:
    """Every record of the workers' output topics, read from the beginning by one consumer."""

    TOPICS = (Kafka.TRANSCRIPTS, Kafka.FINALS, Kafka.DEADLETTER)

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": unique("fuzz-reader"),
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        })
        self.consumer.assign([
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in self.TOPICS
            for p in partitions(self.consumer, topic)
        ])
        self.ids: dict[str, set[str]] = {Kafka.TRANSCRIPTS: set(), Kafka.FINALS: set()}
        self.letters: dict[str, list[tuple[bytes | None, DeadLetter]]] = {}  # by source: (record key, letter)

    def drain(self) -> None:
        for msg in self.consumer.consume(1000, timeout=0.05):
            if msg.error() is not None:
                continue
            topic, value = msg.topic() or "", msg.value() or b""
            try:
                if topic == Kafka.DEADLETTER:
                    letter = decode(value, DeadLetter)
                    self.letters.setdefault(letter.source, []).append((msg.key(), letter))
                else:
                    kind = CloudTranscript if topic == Kafka.TRANSCRIPTS else Final
                    self.ids[topic].add(decode(value, kind).segment_id)
            except DecodeError:
                continue  # the fuzz itself writes garbage to edgecap.transcripts

    def wait_for(self, topic: str, ids: set[str], alive: Callable[[], bool], timeout_s: float = 30) -> None:
        def there() -> bool:
            assert alive(), "a worker thread died"
            self.drain()
            return ids <= self.ids[topic]

        wait_until(there, timeout_s, f"{len(ids)} records in {topic}", every_s=0)

    def close(self) -> None:
        self.consumer.close()


def partitions(consumer: Consumer, topic: str) -> list[int]:
    found: list[int] = []
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        found = sorted(meta.partitions) if meta is not None and not meta.error else []
    assert found, f"topic {topic} has no partitions"
    return found


class Cloud:
    """The real transcription worker (a stand-in engine) and the real reconciler (an SQLite file
    store), each in its own thread as in production, on their own consumer groups."""

    def __init__(self, kafka: Tansu, store_path: Path) -> None:
        def settings(name: str, **more: Any) -> WorkerSettings:
            kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap)
            return WorkerSettings(kafka=kafka_settings, group=unique(name), session_timeout_ms=2000, **more)

        transcribe = settings("fuzz-transcribe", batch_size=8, max_wait_ms=50)
        self.store = Store(f"sqlite:///{store_path}")
        self.transcriber = TranscribeWorker(transcribe, EchoEngine(transcribe), Store("sqlite://"))
        self.reconciler = Reconciler(settings("fuzz-reconcile"), self.store)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=w.run, args=(self.stop,), name=w.name, daemon=True)
            for w in (self.transcriber, self.reconciler)
        ]
        for thread in self.threads:
            thread.start()
        self.bootstrap = kafka.bootstrap
        self.producer = Producer({"bootstrap.servers": kafka.bootstrap, "message.max.bytes": 16 * 1024 * 1024})
        self.outputs: Outputs | None = None
        self.barrier_outcomes: tuple[Counter[str], Counter[str]] = (Counter(), Counter())  # of the last barrier

    def produce(self, records: list[Record]) -> list[str]:
        """Produce ``records`` in one go; where each one landed (``topic[partition]@offset``)."""
        where: list[str] = [""] * len(records)

        def landed(i: int) -> Any:
            def report(err: Any, msg: Any) -> None:
                assert err is None, err
                where[i] = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"

            return report

        for i, r in enumerate(records):
            self.producer.produce(r.topic, value=r.value, key=r.key, headers=list(r.headers), on_delivery=landed(i))
        assert self.producer.flush(30) == 0
        return where

    def barrier(self) -> None:
        """Return once every record produced so far was taken by the workers (see the module's
        docstring): a good segment, transcript and draft on every partition of its topic, waited
        for as their transcripts, finals and stored drafts. What the transcriber wrote for the
        batch the reconciler may still be reading: the test waits for its counts."""
        if self.outputs is None:  # the output topics exist once the workers created them
            self.outputs = Outputs(self.bootstrap)
        agent = "fuzz-barrier"
        consumer = self.outputs.consumer
        segments = [make_segment(agent, 0) for _ in partitions(consumer, Kafka.SEGMENTS)]
        transcripts = [
            CloudTranscript(**make_segment(agent, 0).header(), transcript=_transcript("barrier"), worker="fuzz")
            for _ in partitions(consumer, Kafka.TRANSCRIPTS)
        ]
        drafts = [Draft.of(make_segment(agent, 0)) for _ in partitions(consumer, Kafka.DRAFTS)]
        for topic, messages in ((Kafka.SEGMENTS, segments), (Kafka.TRANSCRIPTS, transcripts), (Kafka.DRAFTS, drafts)):
            for p, message in enumerate(messages):
                self.producer.produce(topic, value=encode(message), key=agent, partition=p)
        assert self.producer.flush(30) == 0
        self.outputs.wait_for(Kafka.TRANSCRIPTS, {s.segment_id for s in segments}, self.alive)
        self.outputs.wait_for(Kafka.FINALS, {m.segment_id for m in [*segments, *transcripts]}, self.alive)

        def drafts_stored() -> bool:
            rows = [self.store.get((agent, m.segment_id)) for m in [*segments, *drafts]]
            return all(row is not None and row["draft"] is not None for row in rows)

        wait_until(drafts_stored, 30, "the barrier's drafts in the store")
        self.barrier_outcomes = (
            Counter(transcribed=len(segments)),
            Counter(draft=len(segments) + len(drafts), transcript=len(segments) + len(transcripts)),
        )

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self.threads)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        if self.outputs is not None:
            self.outputs.close()
        self.store.close()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The workers on a Kafka-protocol broker of this module's own: the fuzz leaves tens of MB of
    hostile records in the input topics, which the session broker's later readers (groups that
    start from the earliest offset) should not have to wade through."""
    with Tansu() as kafka:
        running = Cloud(kafka, tmp_path_factory.mktemp("fuzz") / "captions.db")
        try:
            running.barrier()  # the groups have joined and the topics exist
            yield running
        finally:
            running.close()


def healthy(worker: str) -> float | None:
    return REGISTRY.get_sample_value("edgecap_worker_healthy", {"worker": worker})


def dead_letters_metric(worker: str, reason: str) -> float:
    return REGISTRY.get_sample_value("edgecap_worker_dead_letters_total", {"worker": worker, "reason": reason}) or 0.0


TOO_BIG = b'{"schema": "edgecap.segment.v1", "pad": "' + b"x" * DEFAULT_MAX_BYTES + b'"}'


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(batch=st.lists(records(), min_size=1, max_size=8))
@example(batch=[Record(topic, value) for topic in INPUTS for value in (None, b"", TOO_BIG)])
@example(batch=[Record(t, _replace(t, p, v), AGENT.encode()) for t in INPUTS for p, v in LIMITS[t]])
def test_every_record_is_processed_or_dead_lettered_and_the_workers_go_on(cloud: Cloud, batch: list[Record]) -> None:
    batch = [record.fresh() for record in batch]
    before = {w.name: outcomes(w) for w in (cloud.transcriber, cloud.reconciler)}
    metric_before = {
        (w, r.value): dead_letters_metric(w, r.value) for w in ("transcribe", "reconcile") for r in Reason
    }
    where = cloud.produce(batch)
    expected = Expected(max_final_bytes=cloud.reconciler.max_record_bytes)
    for record, at in zip(batch, where, strict=True):
        expected.add(record, at)
    cloud.barrier()
    want_t = expected.transcribe + cloud.barrier_outcomes[0]
    want_r = expected.reconcile + cloud.barrier_outcomes[1]

    def counted() -> bool:
        assert cloud.alive(), "a worker thread died"
        got_t = outcomes(cloud.transcriber) - before["transcribe"]
        got_r = outcomes(cloud.reconciler) - before["reconcile"]
        return got_t == want_t and got_r == want_r

    def counts() -> str:
        got = [outcomes(w) - before[w.name] for w in (cloud.transcriber, cloud.reconciler)]
        return f"transcribe {dict(got[0])} (want {dict(want_t)}), reconcile {dict(got[1])} (want {dict(want_r)})"

    # the workers counted exactly what the batch holds, the barrier's own records aside
    wait_until(counted, 30, "the workers' counts of the batch", detail=counts)

    # every refused record has exactly one dead letter, with decode's reason and its bytes; every
    # valid segment and transcript has its final
    assert cloud.outputs is not None
    cloud.outputs.wait_for(Kafka.FINALS, expected.finals, cloud.alive)
    for record, at in zip(batch, where, strict=True):
        letters = cloud.outputs.letters.get(f"kafka:{at}", [])
        if at in expected.letters:
            assert [d.reason for _, d in letters] == [expected.letters[at]], record
            key, letter = letters[0]
            assert letter.payload == (record.value or b"")[: len(letter.payload)]
            # keyed by the record's key, as text: whatever bytes it held, cut to the contract's bound
            claimed = record.key.decode("utf-8", "replace") if record.key else None
            assert letter.agent_id == (None if claimed is None else clip(claimed, b.MAX_SOURCE_CHARS))
            assert key == (None if letter.agent_id is None else letter.agent_id.encode())
        else:
            assert letters == [], record
    for worker, want in (("transcribe", expected.transcribe), ("reconcile", expected.reconcile)):
        for reason in Reason:
            grew = dead_letters_metric(worker, reason.value) - metric_before[(worker, reason.value)]
            assert grew == want[f"dead_letter:{reason.value}"], (worker, reason)
    assert healthy("transcribe") == 1.0 and healthy("reconcile") == 1.0
