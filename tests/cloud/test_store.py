"""The caption store on a real SQLite file and a real PostgreSQL (every test runs on both, through the
``store_url`` fixture): arrival orders, duplicates, racing reconcilers, ordering."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cloud.rule import reconcile
from cloud.store import Store
from contracts import CloudTranscript, Draft, Transcript, new_segment_id

T0 = 1_700_000_000.0


def header(segment_id: str, seq: int, agent_id: str) -> dict[str, Any]:
    """What a draft and a transcript of one segment share: segment ``seq`` starts ``10 * seq`` s after T0."""
    start = T0 + seq * 10
    return {"agent_id": agent_id, "segment_id": segment_id, "seq": seq, "started_at": start, "ended_at": start + 2.5}


def make_draft(segment_id: str, seq: int = 0, text: str = "hello wrld", agent_id: str = "pi-1") -> Draft:
    edge = Transcript(text=text, model_id="whisper-tiny.en-int8-onnx", produced_at=T0 + seq * 10 + 3)
    return Draft(**header(segment_id, seq, agent_id), draft=edge)


def make_transcript(
    segment_id: str, seq: int = 0, text: str = "Hello world.", agent_id: str = "pi-1"
) -> CloudTranscript:
    cloud = Transcript(text=text, model_id="whisper-tiny.en-hf", produced_at=T0 + seq * 10 + 4)
    return CloudTranscript(**header(segment_id, seq, agent_id), transcript=cloud, worker="test-worker")


def test_draft_then_final(store: Store) -> None:
    sid = new_segment_id()
    assert store.upsert_draft(make_draft(sid)) is True
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["draft"] is not None and seg["final"] is None
    assert seg["draft"]["text"] == "hello wrld"

    final = store.record_final(make_transcript(sid), reconcile)
    assert final is not None
    assert (final.text, final.source, final.version, final.draft_text) == ("Hello world.", "cloud", 2, "hello wrld")

    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["final"] is not None and seg["draft"] is not None
    assert seg["final"]["text"] == "Hello world." and seg["final"]["model_id"] == "whisper-tiny.en-hf"
    assert seg["draft"]["text"] == "hello wrld"
    assert [(v["version"], v["source"], v["text"]) for v in store.versions(("pi-1", sid))] == [
        (1, "edge", "hello wrld"),
        (2, "cloud", "Hello world."),
    ]
    assert store.counts() == {"segments": 1, "drafts": 1, "finals": 1}


def test_final_before_draft(store: Store) -> None:
    sid = new_segment_id()
    final = store.record_final(make_transcript(sid), reconcile)
    assert final is not None and final.source == "cloud" and final.draft_text is None
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["draft"] is None and seg["final"] is not None
    assert store.counts() == {"segments": 1, "drafts": 0, "finals": 1}

    assert store.upsert_draft(make_draft(sid)) is True  # late draft is still kept as version 1
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["draft"] is not None and seg["final"] is not None
    assert (seg["draft"]["text"], seg["final"]["text"]) == ("hello wrld", "Hello world.")
    assert [v["version"] for v in store.versions(("pi-1", sid))] == [1, 2]
    assert store.counts() == {"segments": 1, "drafts": 1, "finals": 1}


def test_empty_cloud_text_keeps_the_draft(store: Store) -> None:
    sid = new_segment_id()
    store.upsert_draft(make_draft(sid, text="turn left"))
    final = store.record_final(make_transcript(sid, text="  "), reconcile)
    assert final is not None and (final.text, final.source, final.version) == ("turn left", "edge", 2)
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["final"] is not None
    assert (seg["final"]["source"], seg["final"]["model_id"]) == ("edge", "whisper-tiny.en-int8-onnx")


def test_duplicates(store: Store) -> None:
    sid = new_segment_id()
    assert store.upsert_draft(make_draft(sid)) is True
    assert store.upsert_draft(make_draft(sid, text="changed")) is False
    assert store.record_final(make_transcript(sid), reconcile) is not None
    assert store.record_final(make_transcript(sid, text="a different text"), reconcile) is None
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["draft"] is not None and seg["final"] is not None
    assert (seg["draft"]["text"], seg["final"]["text"]) == ("hello wrld", "Hello world.")
    assert len(store.versions(("pi-1", sid))) == 2
    assert store.counts() == {"segments": 1, "drafts": 1, "finals": 1}


def test_unpublished_final_until_marked(store: Store) -> None:
    sid = new_segment_id()
    final = store.record_final(make_transcript(sid), reconcile)
    assert store.unpublished_final(("pi-1", sid)) == final
    store.mark_published([("pi-1", sid)])
    assert store.unpublished_final(("pi-1", sid)) is None


def test_exactly_one_final_when_two_reconcilers_race(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]  # two processes' worth of connection pools on one store
    ids = [new_segment_id() for _ in range(40)]
    for i, sid in enumerate(ids):
        stores[0].upsert_draft(make_draft(sid, seq=i))
    won: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def reconciler(n: int) -> None:
        start.wait()
        for i, sid in enumerate(ids):
            final = stores[n].record_final(make_transcript(sid, seq=i, text=f"text from reconciler {n}"), reconcile)
            if final is not None:
                won[n].append(sid)

    threads = [threading.Thread(target=reconciler, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won[0] + won[1]) == sorted(ids)  # each segment won exactly once
    assert not set(won[0]) & set(won[1])
    for sid in ids:
        winner = 0 if sid in won[0] else 1
        seg = stores[1].get(("pi-1", sid))
        assert seg is not None and seg["final"] is not None
        assert seg["final"]["text"] == f"text from reconciler {winner}"
        assert [v["version"] for v in stores[0].versions(("pi-1", sid))] == [1, 2]
    assert stores[0].counts() == {"segments": 40, "drafts": 40, "finals": 40}
    for s in stores:
        s.close()


def test_list_newest_first_and_by_agent(store: Store) -> None:
    ids = {}
    for seq in (2, 0, 3, 1):
        ids[seq] = new_segment_id()
        store.upsert_draft(make_draft(ids[seq], seq=seq))
    other = new_segment_id()
    store.record_final(make_transcript(other, seq=5, agent_id="laptop-2"), reconcile)

    listed = store.list_segments()
    assert [s["segment_id"] for s in listed] == [other, ids[3], ids[2], ids[1], ids[0]]
    assert [s["seq"] for s in store.list_segments(limit=2)] == [5, 3]
    assert [s["seq"] for s in store.list_segments(agent_id="pi-1")] == [3, 2, 1, 0]
    assert [s["agent_id"] for s in store.list_segments(agent_id="laptop-2")] == ["laptop-2"]
    assert store.list_segments(agent_id="nobody") == []


def test_reopen_keeps_data_and_uses_wal(store_url: str) -> None:
    s = Store(store_url)
    sid = new_segment_id()
    s.upsert_draft(make_draft(sid))
    if s.dialect == "sqlite":
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.close()
    s = Store(store_url)
    assert s.get(("pi-1", sid)) is not None and s.upsert_draft(make_draft(sid)) is False
    s.close()


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported store"):
        Store("mysql://localhost/x")


def test_two_devices_with_one_segment_id_never_share_a_row(store: Store) -> None:
    """Keys are (agent_id, segment_id): a second device's final carries its own draft, the first
    device's caption is untouched, and the store says the id collides (the reconciler counts it)."""
    sid = new_segment_id()
    assert store.upsert_draft(make_draft(sid, text="first device", agent_id="pi-1")) is True
    assert not store.collides(("pi-1", sid))
    assert store.upsert_draft(make_draft(sid, text="second device", agent_id="pi-2")) is True
    assert store.collides(("pi-1", sid)) and store.collides(("pi-2", sid))

    second = store.record_final(make_transcript(sid, text="", agent_id="pi-2"), reconcile)  # empty: the draft stands
    assert second is not None and (second.agent_id, second.text) == ("pi-2", "second device")
    first = store.record_final(make_transcript(sid, text="", agent_id="pi-1"), reconcile)
    assert first is not None and (first.agent_id, first.text) == ("pi-1", "first device")
    for agent, text in (("pi-1", "first device"), ("pi-2", "second device")):
        seg = store.get((agent, sid))
        assert seg is not None and seg["final"] is not None and seg["final"]["text"] == text
        assert [(v["agent_id"], v["version"], v["text"]) for v in store.versions((agent, sid))] == [
            (agent, 1, text),
            (agent, 2, text),
        ]
    store.mark_published([("pi-1", sid)])
    assert store.unpublished_final(("pi-1", sid)) is None
    assert store.unpublished_final(("pi-2", sid)) == second
    assert store.counts() == {"segments": 2, "drafts": 2, "finals": 2}


def test_attempts_are_counted_durably_until_forgotten(store_url: str) -> None:
    a, b = ("pi-1", new_segment_id()), ("pi-2", new_segment_id())
    s = Store(store_url)
    assert s.take_attempts([a, b]) == {a: 1, b: 1}
    assert s.take_attempts([a]) == {a: 2}
    s.close()
    s = Store(store_url)  # a restarted worker sees the counts
    assert s.take_attempts([a, b, a]) == {a: 3, b: 2}
    s.forget_attempts([a])
    assert s.take_attempts([a, b]) == {a: 1, b: 3}
    s.close()
