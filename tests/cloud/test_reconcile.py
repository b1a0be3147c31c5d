"""The reconciler against a real Kafka-protocol broker (Tansu) and a real store: every test runs on an
SQLite file and on a real PostgreSQL (the ``store_url`` fixture)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from support import make_segment, wait_until

from cloud.reconcile import Reconciler
from cloud.rule import reconcile
from cloud.settings import WorkerSettings
from cloud.store import Store
from contracts import (
    CloudTranscript,
    DeadLetter,
    DecodeError,
    Draft,
    Final,
    Kafka,
    Quality,
    Transcript,
    decode,
    encode,
    new_segment_id,
)
from devtools.brokers import Tansu
from runtime.settings import KafkaSettings

AGENT = "pi-reconcile"


def header(segment_id: str, seq: int) -> dict[str, Any]:
    """What a draft and a transcript of one segment share: a segment that ended a second ago."""
    now = time.time()
    return {"agent_id": AGENT, "segment_id": segment_id, "seq": seq, "started_at": now - 3, "ended_at": now - 1}


def draft(segment_id: str, seq: int, text: str) -> Draft:
    edge = Transcript(text=text, model_id="whisper-tiny.en-int8-onnx", produced_at=time.time())
    return Draft(**header(segment_id, seq), draft=edge)


def transcript(segment_id: str, seq: int, text: str) -> CloudTranscript:
    cloud = Transcript(text=text, model_id="whisper-tiny.en-hf", produced_at=time.time())
    return CloudTranscript(**header(segment_id, seq), transcript=cloud, worker="test")


def produce(kafka: Tansu, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all", "enable.idempotence": True})
    for topic, value in records:
        producer.produce(topic, value=value, key=AGENT.encode())
    assert producer.flush(10) == 0


class TopicReader:
    """Reads a topic from the beginning with its own consumer group."""

    def __init__(self, kafka: Tansu, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": f"test-reader-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 500,
            }
        )
        self.consumer.subscribe([topic])
        self.values: list[bytes] = []

    def read_until(self, done: Callable[[list[bytes]], bool], timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(self.values):
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self.values.append(msg.value())
        return self.values

    def close(self) -> None:
        self.consumer.close()


class Running:
    """A reconciler in a thread."""

    def __init__(self, settings: WorkerSettings, store: Store) -> None:
        self.reconciler = Reconciler(settings, store)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.reconciler.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def wait_for(self, outcome: str, n: int, timeout_s: float = 20) -> None:
        tally = self.reconciler.tally
        wait_until(lambda: tally[outcome] >= n, timeout_s, f"{n} {outcome}", detail=lambda: str(dict(tally.counts)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def kafka() -> Iterator[Tansu]:
    """This module's own broker: a reconciler's new group reads its topics from the start, and the
    session broker's topics hold every other test's records (the waits here would count them)."""
    with Tansu() as broker:
        yield broker


@pytest.fixture
def settings(kafka: Tansu) -> WorkerSettings:
    return WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap),
        group=f"edgecap-reconcile-test-{uuid.uuid4()}",
        session_timeout_ms=2000,
        topic_partitions=3,
    )


def wait_for_drafts(store: Store, keys: list[tuple[str, str]], timeout_s: float = 30) -> None:
    """Until the store holds the drafts of these segments."""

    def stored() -> bool:
        return all((row := store.get(key)) is not None and row["draft"] is not None for key in keys)

    wait_until(stored, timeout_s, f"the drafts of {keys} stored")


def finals_for(values: list[bytes], ids: set[str]) -> list[Final]:
    """This test's finals; the topic is shared with other tests, some of which write garbage to it."""
    finals = []
    for value in values:
        try:
            final = decode(value, Final)
        except DecodeError:
            continue
        if final.segment_id in ids:
            finals.append(final)
    return finals


@pytest.mark.integration
def test_reconciler_stores_and_publishes_one_final_per_segment(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    ids = [new_segment_id() for _ in range(3)]
    garbage = b'{"schema": "edgecap.transcript.v1", "agent_id": "pi-reconcile"'
    finals_reader = TopicReader(kafka, Kafka.FINALS)
    dead_reader = TopicReader(kafka, Kafka.DEADLETTER)
    running = Running(settings, store)
    try:
        # Drafts and transcripts travel on different topics, so each step waits for the one before.
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(ids[0], 0, "The old farmer walked.")))])
        wait_until(lambda: (row := store.get((AGENT, ids[0]))) is not None and row["final"] is not None, 30,
                   "a final from a transcript before its draft")  # fmt: skip
        produce(
            kafka,
            [
                (Kafka.DRAFTS, encode(draft(ids[0], 0, "the old farmer walk"))),
                (Kafka.DRAFTS, encode(draft(ids[1], 1, "she opened the window"))),
                (Kafka.DRAFTS, encode(draft(ids[2], 2, "please bring a coat"))),
            ],
        )
        wait_for_drafts(store, [(AGENT, sid) for sid in ids])
        produce(
            kafka,
            [
                (Kafka.TRANSCRIPTS, encode(transcript(ids[1], 1, "She opened the window."))),
                (Kafka.TRANSCRIPTS, garbage),
                (Kafka.TRANSCRIPTS, encode(transcript(ids[2], 2, ""))),  # cloud heard nothing: draft stays
                (Kafka.TRANSCRIPTS, encode(transcript(ids[1], 1, "She opened the window."))),  # duplicate
            ],
        )
        running.wait_for("final", 3)
        running.wait_for("duplicate_transcript", 1)
        running.wait_for("dead_letter", 1)

        wanted = set(ids)
        finals_reader.read_until(lambda v: len(finals_for(v, wanted)) >= 3, 20)
        finals = {f.segment_id: f for f in finals_for(finals_reader.values, wanted)}
        assert set(finals) == wanted
        assert (finals[ids[0]].text, finals[ids[0]].source, finals[ids[0]].version) == (
            "The old farmer walked.",
            "cloud",
            2,
        )
        assert finals[ids[1]].draft_text == "she opened the window"
        assert (finals[ids[2]].text, finals[ids[2]].source) == ("please bring a coat", "edge")

        for sid in ids:
            seg = store.get((AGENT, sid))
            assert seg is not None and seg["final"] is not None
            assert seg["final"]["text"] == finals[sid].text
        late = store.get((AGENT, ids[0]))
        assert late is not None and late["draft"] is not None and late["draft"]["text"] == "the old farmer walk"

        dead = [
            decode(v, DeadLetter)
            for v in dead_reader.read_until(lambda v: any(decode(x, DeadLetter).payload == garbage for x in v), 20)
        ]
        mine = [d for d in dead if d.payload == garbage]
        assert len(mine) == 1 and mine[0].reason == "bad_json" and Kafka.TRANSCRIPTS in mine[0].source

        # A transcript duplicated after its final went out changes nothing and publishes nothing.
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(ids[0], 0, "a second opinion")))])
        running.wait_for("duplicate_transcript", 2)
        # the final of a segment transcribed after it: a final for the duplicate would have come first
        later = new_segment_id()
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(later, 4, "The fields are green.")))])
        finals_reader.read_until(lambda v: bool(finals_for(v, {later})), 20)
        counted = [f.segment_id for f in finals_for(finals_reader.values, wanted)]
        assert sorted(counted) == sorted(ids), "exactly one Final per segment"
        seg = store.get((AGENT, ids[0]))
        assert seg is not None and seg["final"] is not None and seg["final"]["text"] == "The old farmer walked."
    finally:
        running.close()
        finals_reader.close()
        dead_reader.close()

    # A restarted reconciler in the same group resumes after the committed offsets.
    restarted = Running(settings, store)
    try:
        new_id = new_segment_id()
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(new_id, 3, "My brother likes books.")))])
        restarted.wait_for("final", 1)  # after anything read again before it in its partition
        tally = restarted.reconciler.tally
        assert tally["final"] == 1 and tally["duplicate_transcript"] == 0 and tally["dead_letter"] == 0
        seg = store.get((AGENT, new_id))
        assert seg is not None and seg["final"] is not None and seg["final"]["text"] == "My brother likes books."
    finally:
        restarted.close()


@pytest.mark.integration
def test_drafts_come_from_the_segments_the_bridge_forwards(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    """The bridge forwards segments as they came; the reconciler stores the draft each one carries,
    skips a segment without one, and leaves an undecodable segment to the transcriber (no second
    dead letter)."""
    with_draft, without_draft = new_segment_id(), new_segment_id()

    def segment(segment_id: str, seq: int, text: str | None) -> bytes:
        return encode(make_segment(AGENT, seq, segment_id=segment_id, seconds=1.0, draft=text or False))

    running = Running(settings, store)
    try:
        produce(kafka, [
            (Kafka.SEGMENTS, segment(with_draft, 0, "the quick brown fox")),
            (Kafka.SEGMENTS, segment(without_draft, 1, None)),
            (Kafka.SEGMENTS, b'{"schema": "edgecap.segment.v1", "agent_id": '),
        ])
        running.wait_for("bad_segment", 1)  # (the topics hold earlier tests' records too: wait for ours)
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(with_draft, 0, "The quick brown fox.")))])

        def final_stored() -> bool:
            seg = store.get((AGENT, with_draft))
            return seg is not None and seg["final"] is not None

        wait_until(final_stored, 20, "the segment's final")
        seg = store.get((AGENT, with_draft))
        assert seg is not None and seg["draft"] is not None and seg["draft"]["text"] == "the quick brown fox"
        assert seg["final"] is not None and seg["final"]["text"] == "The quick brown fox."
        assert store.get((AGENT, without_draft)) is None
    finally:
        running.close()


@pytest.mark.integration
def test_final_stored_but_never_published_is_sent_on_redelivery(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    sid = new_segment_id()
    t = transcript(sid, 0, "After dinner the children played.")
    assert store.record_final(t, reconcile) is not None  # as if a reconciler crashed before producing the Final
    produce(kafka, [(Kafka.TRANSCRIPTS, encode(t))])

    reader = TopicReader(kafka, Kafka.FINALS)
    running = Running(settings, store)
    try:
        running.wait_for("republished_final", 1)
        values = reader.read_until(lambda v: bool(finals_for(v, {sid})), 20)
        finals = finals_for(values, {sid})
        assert len(finals) == 1 and finals[0].text == "After dinner the children played."
        # the reconciler marks it published once Kafka confirmed it: a reader can see it before that
        wait_until(lambda: store.unpublished_final((AGENT, sid)) is None, 20, "the final marked published")
    finally:
        running.close()
        reader.close()


@pytest.mark.integration
def test_values_beyond_the_contract_limits_are_dead_lettered_and_finals_go_on(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    """Issue 9 §2: a transcript whose seq is 2^64 used to decode and then fail the store write, and the
    reconciler retried that batch forever. Values beyond the contract's limits (a 64-bit seq, a time
    far past the clock, a NUL in a text PostgreSQL cannot hold) are refused at decoding and
    dead-lettered, and the segments after them get their finals."""
    poisoned = [new_segment_id() for _ in range(3)]
    good = new_segment_id()

    def tampered(message: bytes, path: tuple[str, ...], value: object) -> bytes:
        doc = json.loads(message)
        target = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return json.dumps(doc).encode()

    bad = [
        (Kafka.TRANSCRIPTS, tampered(encode(transcript(poisoned[0], 0, "x")), ("seq",), 2**64)),
        (Kafka.TRANSCRIPTS, tampered(encode(transcript(poisoned[1], 1, "x")), ("started_at",), 1e300)),
        (Kafka.DRAFTS, tampered(encode(draft(poisoned[2], 2, "x")), ("draft", "text"), "nul\x00byte")),
    ]
    dead_reader = TopicReader(kafka, Kafka.DEADLETTER)
    running = Running(settings, store)
    try:
        produce(kafka, [*bad, (Kafka.TRANSCRIPTS, encode(transcript(good, 3, "Still captioned.")))])

        def final_stored() -> bool:
            seg = store.get((AGENT, good))
            return seg is not None and seg["final"] is not None

        wait_until(final_stored, 20, "the final of the segment after the poisoned ones")
        running.wait_for("dead_letter", 3)
        payloads = {raw for _, raw in bad}
        mine = [
            d for d in (decode(v, DeadLetter) for v in dead_reader.read_until(
                lambda v: sum(decode(x, DeadLetter).payload in payloads for x in v) >= 3, 20))
            if d.payload in payloads
        ]
        assert sorted(d.reason for d in mine) == ["invalid"] * 3
        assert {d.detail.split(":")[0] for d in mine} == {"seq", "started_at", "draft.text"}
        assert all(store.get((AGENT, sid)) is None for sid in poisoned)
    finally:
        running.close()
        dead_reader.close()


@pytest.mark.parametrize("worker", ["transcribe", "reconcile"])
def test_check_config_validates_and_hides_secrets(
    worker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud.__main__ import main

    monkeypatch.setenv("EDGECAP_WORKER_STORE_URL", "postgresql://edgecap:hunter2@db:5432/edgecap")
    monkeypatch.setenv("EDGECAP_WORKER_KAFKA__EXTRA", '{"sasl.password": "hunter2"}')
    monkeypatch.setenv("EDGECAP_WORKER_BATCH_SIZE", "4")
    assert main([worker, "--check-config"]) == 0
    out = capsys.readouterr().out
    assert '"batch_size": 4' in out and "db:5432" in out and "hunter2" not in out

    monkeypatch.setenv("EDGECAP_WORKER_BATCH_SIZE", "0")
    assert main([worker, "--check-config"]) == 2
    assert "batch_size" in capsys.readouterr().err


@pytest.mark.integration
def test_two_devices_with_one_segment_id_get_their_own_finals(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    """Issue 9 §1: two devices that use the same segment_id used to share one row, so the second
    device's final carried the first device's draft. Now each keeps its own row and final, on its own
    device's key, and the collision is counted."""
    sid = new_segment_id()
    drafts, transcripts = [], []
    for agent, text in (("pi-one", "the first device speaks"), ("pi-two", "the second device speaks")):
        head = {**header(sid, 0), "agent_id": agent}
        edge = Transcript(text=text, model_id="whisper-tiny.en-int8-onnx", produced_at=time.time())
        cloud = Transcript(text="", model_id="whisper-tiny.en-hf", produced_at=time.time())  # empty: the draft stands
        drafts.append((Kafka.DRAFTS, encode(Draft(**head, draft=edge))))
        transcripts.append((Kafka.TRANSCRIPTS, encode(CloudTranscript(**head, transcript=cloud, worker="test"))))

    reader = TopicReader(kafka, Kafka.FINALS)
    running = Running(settings, store)
    try:
        produce(kafka, drafts)
        # both drafts stored under the same segment_id, apart (the group also reads other tests' records:
        # the store, not a count, says when ours are in)
        wait_for_drafts(store, [("pi-one", sid), ("pi-two", sid)])
        produce(kafka, transcripts)
        running.wait_for("final", 2)
        running.wait_for("id_collision", 1)
        finals = finals_for(reader.read_until(lambda v: len(finals_for(v, {sid})) >= 2, 20), {sid})
        assert sorted((f.agent_id, f.text) for f in finals) == [
            ("pi-one", "the first device speaks"),
            ("pi-two", "the second device speaks"),
        ]
        for agent in ("pi-one", "pi-two"):
            seg = store.get((agent, sid))
            assert seg is not None and seg["final"] is not None and seg["draft"] is not None
            assert seg["final"]["text"] == seg["draft"]["text"]
    finally:
        running.close()
        reader.close()


@pytest.mark.integration
def test_a_draft_without_a_transcript_becomes_the_final_at_the_deadline_and_is_upgraded_once(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    """Issue 10: with the cloud behind, the draft is the final once ``final_deadline_s`` has passed
    (source edge, reason deadline) and goes to edgecap.finals; the transcript that comes later makes
    version 3, once."""
    sid = new_segment_id()
    settings = settings.model_copy(update={"final_deadline_s": 1.0})
    reader = TopicReader(kafka, Kafka.FINALS)
    running = Running(settings, store)
    try:
        produced_at = time.time()
        produce(kafka, [(Kafka.DRAFTS, encode(draft(sid, 0, "turn left at the lights")))])
        finals = finals_for(reader.read_until(lambda v: bool(finals_for(v, {sid})), 30), {sid})
        assert [(f.version, f.source, f.reason, f.text) for f in finals] == [
            (2, "edge", "deadline", "turn left at the lights")
        ]
        seg = store.get((AGENT, sid))
        assert seg is not None and seg["final"] is not None
        assert seg["final"]["stored_at"] >= produced_at + 1.0  # not before its deadline
        wait_until(lambda: store.unpublished_final((AGENT, sid)) is None, 20, "the deadline final marked published")
        assert running.reconciler.tally["deadline_final"] >= 1

        produce(kafka, [
            (Kafka.TRANSCRIPTS, encode(transcript(sid, 0, "Turn left at the lights."))),
            (Kafka.TRANSCRIPTS, encode(transcript(sid, 0, "Turn left at the lights."))),  # a duplicate
        ])  # fmt: skip
        running.wait_for("upgraded_final", 1)
        running.wait_for("duplicate_transcript", 1)
        later = new_segment_id()  # a final after the duplicate's place: a second upgrade would come before it
        produce(kafka, [(Kafka.TRANSCRIPTS, encode(transcript(later, 1, "Then right.")))])
        finals = finals_for(reader.read_until(lambda v: bool(finals_for(v, {later})), 30), {sid})
        assert [(f.version, f.source, f.reason, f.text) for f in finals] == [
            (2, "edge", "deadline", "turn left at the lights"),
            (3, "cloud", "cloud", "Turn left at the lights."),
        ]
        assert [(v["version"], v["source"]) for v in store.versions((AGENT, sid))] == [
            (1, "edge"),
            (2, "edge"),
            (3, "cloud"),
        ]
        assert running.reconciler.tally["upgraded_final"] == 1
    finally:
        running.close()
        reader.close()


@pytest.mark.integration
def test_the_draft_stands_when_the_cloud_result_fails_a_check(
    kafka: Tansu, settings: WorkerSettings, store: Store
) -> None:
    unsure, sure = new_segment_id(), new_segment_id()
    head = header(unsure, 0)
    cloud = Transcript(
        text="Turn left at the light's end.",
        model_id="whisper-tiny.en@ct2-int8:1a5afae06a4d",
        produced_at=time.time(),
        quality=Quality(avg_logprob=-1.4, no_speech_prob=0.3, compression_ratio=1.1),
    )
    reader = TopicReader(kafka, Kafka.FINALS)
    running = Running(settings, store)
    try:
        produce(kafka, [
            (Kafka.DRAFTS, encode(draft(unsure, 0, "turn left at the lights"))),
            (Kafka.DRAFTS, encode(draft(sure, 1, "the old farmer walk slowly"))),
        ])  # fmt: skip
        wait_for_drafts(store, [(AGENT, unsure), (AGENT, sure)])
        produce(kafka, [
            (Kafka.TRANSCRIPTS, encode(CloudTranscript(**head, transcript=cloud, worker="test"))),
            (Kafka.TRANSCRIPTS, encode(transcript(sure, 1, "The old farmer walked slowly."))),
        ])  # fmt: skip
        ids = {unsure, sure}
        values = reader.read_until(lambda v: len(finals_for(v, ids)) >= 2, 30)
        finals = {f.segment_id: f for f in finals_for(values, ids)}
        assert (finals[unsure].text, finals[unsure].source, finals[unsure].reason) == (
            "turn left at the lights", "edge", "low_logprob"
        )  # fmt: skip
        assert finals[unsure].transcript.text == "Turn left at the light's end."  # the cloud result, kept
        assert (finals[sure].text, finals[sure].source, finals[sure].reason) == (
            "The old farmer walked slowly.", "cloud", "cloud"
        )  # fmt: skip
        kept, taken = store.reconciliation((AGENT, unsure)), store.reconciliation((AGENT, sure))
        assert kept is not None and (kept["reason"], kept["edits"], kept["disagreement"]) == ("low_logprob", 0, 0.0)
        assert kept["alignment"] is not None and [p["op"] for p in kept["alignment"]].count("equal") == 4
        assert taken is not None and (taken["reason"], taken["edits"], taken["final_words"]) == ("cloud", 1, 5)
    finally:
        running.close()
        reader.close()


def test_the_fleet_keeps_each_device_s_newest_status_and_a_history(kafka: Tansu, settings: WorkerSettings) -> None:
    """Statuses from edgecap.status (as the bridge forwards heartbeats and last wills): the newest by
    the device's clock is the latest, whatever order they come in; all are in the history; the
    dashboard's fleet routes show them."""
    from fastapi.testclient import TestClient
    from support import dashboard_user

    from cloud.dashboard import create_app
    from cloud.settings import DashboardSettings
    from contracts import Status

    store = Store("sqlite://")
    now = time.time()
    heartbeat = Status(agent_id=AGENT, online=True, at=now - 5, queue_depth=3, muted=True, site="lab")
    will = Status(agent_id=AGENT, online=False, at=now, site="lab")  # its last will: offline
    late = Status(agent_id=AGENT, online=True, at=now - 60, queue_depth=99, site="lab")  # an old one, late
    produce(kafka, [(Kafka.STATUS, encode(s)) for s in (heartbeat, will, late)]
            + [(Kafka.STATUS, b'{"schema": "edgecap.status.v1"}')])  # fmt: skip
    running = Running(settings, store)
    try:
        running.wait_for("status", 2)
        running.wait_for("status_older", 1)
    finally:
        running.close()
    [latest] = store.agents()
    assert (latest["agent_id"], latest["online"], latest["site"], latest["at"]) == (AGENT, False, "lab", will.at)
    found = store.agent(AGENT)
    assert found is not None and [h["at"] for h in found["history"]] == [will.at, heartbeat.at, late.at]
    _, viewer = dashboard_user(store, "viewer")
    client = TestClient(create_app(DashboardSettings(store_url="sqlite://"), store), headers=viewer)
    assert [a["agent_id"] for a in client.get("/api/agents", params={"site": "lab"}).json()] == [AGENT]
    assert client.get("/api/agents", params={"site": "elsewhere"}).json() == []
    one = client.get(f"/api/agents/{AGENT}").json()
    assert one["online"] is False and one["history"][1]["queue_depth"] == 3 and one["history"][1]["muted"] is True
    assert client.get("/api/agents/nobody").status_code == 404
    assert store.trim_status_history(now + 3600) == 3 and store.agent(AGENT)["history"] == []  # type: ignore[index]
    assert len(store.agents()) == 1  # the latest stays

