"""The caption store on a real SQLite file and a real PostgreSQL (every test runs on both, through the
``store_url`` fixture): arrival orders, duplicates, racing reconcilers, ordering."""

from __future__ import annotations

import threading
import time
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
    assert final is not None and store.unpublished_final(("pi-1", sid)) == final
    store.mark_published([final])
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
    store.mark_published([first])
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


# --- provenance, the deadline and its upgrade (issue 10) --------------------------------------


def test_a_final_keeps_its_reason_alignment_provenance_and_disagreement(store: Store) -> None:
    sid = new_segment_id()
    store.upsert_draft(make_draft(sid, text="the old farmer walk slowly"))
    final = store.record_final(make_transcript(sid, text="The old farmer walked slowly."), reconcile)
    assert final is not None and final.reason == "cloud"
    seg = store.get(("pi-1", sid))
    assert seg is not None and seg["final"] is not None and seg["final"]["reason"] == "cloud"
    made = store.reconciliation(("pi-1", sid))
    assert made is not None
    assert made["reason"] == "cloud" and (made["edits"], made["final_words"]) == (1, 5)
    assert made["disagreement"] == pytest.approx(0.2)
    assert made["alignment"] is not None
    assert [(p["draft"], p["cloud"], p["op"]) for p in made["alignment"]][3] == ("walk", "walked", "substitute")
    assert made["words"] is not None and {w["model_id"] for w in made["words"]} == {"whisper-tiny.en-hf"}
    assert [w["word"] for w in made["words"]] == ["The", "old", "farmer", "walked", "slowly."]
    assert store.reconciliation(("pi-1", new_segment_id())) is None


def test_disagreement_per_agent_and_edge_model(store: Store) -> None:
    cases = [  # agent, edge model, draft, cloud text
        ("pi-1", "edge-a", "the old farmer walk slowly", "The old farmer walked slowly."),  # 1 of 5
        ("pi-1", "edge-a", "turn left", "Turn left."),  # 0 of 2
        ("pi-1", "edge-b", "please bring a coat", "Please bring a warm coat."),  # 1 of 5
        ("pi-1", "edge-b", "turn left at the lights", ""),  # the draft stands (cloud_empty): 0 of 5
        ("pi-2", "edge-a", "hello wrld", "Hello world."),  # 1 of 2
    ]
    for i, (agent, model, draft_text, cloud_text) in enumerate(cases):
        sid = new_segment_id()
        edge = Transcript(text=draft_text, model_id=model, produced_at=T0 + i * 10 + 3)
        store.upsert_draft(Draft(**header(sid, i, agent), draft=edge))
        store.record_final(make_transcript(sid, seq=i, text=cloud_text, agent_id=agent), reconcile)
    store.record_final(make_transcript(new_segment_id(), seq=9, agent_id="pi-2"), reconcile)  # no draft: left out

    rows = store.disagreement()
    assert [(r["agent_id"], r["edge_model_id"], r["segments"], r["edits"], r["final_words"]) for r in rows] == [
        ("pi-1", "edge-a", 2, 1, 7),
        ("pi-1", "edge-b", 2, 1, 10),
        ("pi-2", "edge-a", 1, 1, 2),
    ]
    first, second, third = rows
    assert first["wer"] == pytest.approx(1 / 7) and first["mean_disagreement"] == pytest.approx(0.1)
    assert (second["drafts_kept"], second["reasons"]) == (1, {"cloud": 1, "cloud_empty": 1})
    assert third["wer"] == pytest.approx(0.5) and first["reasons"] == {"cloud": 2}
    assert [r["edge_model_id"] for r in store.disagreement(agent_id="pi-2")] == ["edge-a"]
    assert store.disagreement(since=time.time() + 60) == []


def test_a_late_draft_becomes_the_final_and_a_later_transcript_upgrades_it_once(store: Store) -> None:
    waiting, answered = new_segment_id(), new_segment_id()
    store.upsert_draft(make_draft(waiting, seq=0, text="turn left"))
    store.upsert_draft(make_draft(answered, seq=1, text="hello wrld"))
    assert store.record_final(make_transcript(answered, seq=1), reconcile) is not None
    stored_at = time.time()
    assert store.claim_overdue(stored_at - 60) == []  # not overdue yet

    (late,) = store.claim_overdue(time.time())
    assert (late.segment_id, late.text, late.source, late.reason, late.version) == (
        waiting, "turn left", "edge", "deadline", 2
    )  # fmt: skip
    assert late.transcript.model_id == "whisper-tiny.en-int8-onnx" and late.draft_text == "turn left"
    assert store.claim_overdue(time.time()) == []  # claimed once
    assert store.unpublished_final(("pi-1", waiting)) == late
    made = store.reconciliation(("pi-1", waiting))
    assert made is not None and made["reason"] == "deadline" and made["disagreement"] is None
    assert [r["segments"] for r in store.disagreement()] == [1]  # a deadline final is not weighed

    store.mark_published([late])
    upgrade = store.record_final(make_transcript(waiting, seq=0, text="Turn left."), reconcile)
    assert upgrade is not None
    assert (upgrade.text, upgrade.source, upgrade.reason, upgrade.version) == ("Turn left.", "cloud", "cloud", 3)
    assert store.unpublished_final(("pi-1", waiting)) == upgrade  # the upgrade is to be sent
    store.mark_published([late])  # a late mark of the version it replaced changes nothing
    assert store.unpublished_final(("pi-1", waiting)) == upgrade
    store.mark_published([upgrade])
    assert store.unpublished_final(("pi-1", waiting)) is None

    assert store.record_final(make_transcript(waiting, seq=0, text="Turn right."), reconcile) is None  # once
    seg = store.get(("pi-1", waiting))
    assert seg is not None and seg["final"] is not None
    assert (seg["final"]["text"], seg["final"]["version"], seg["final"]["reason"]) == ("Turn left.", 3, "cloud")
    assert [(v["version"], v["source"], v["text"]) for v in store.versions(("pi-1", waiting))] == [
        (1, "edge", "turn left"),
        (2, "edge", "turn left"),
        (3, "cloud", "Turn left."),
    ]
    made = store.reconciliation(("pi-1", waiting))
    assert made is not None and made["edits"] == 0 and made["disagreement"] == 0.0
    assert store.counts() == {"segments": 2, "drafts": 2, "finals": 2}


def test_an_upgrade_that_fails_a_check_keeps_the_draft_as_version_3(store: Store) -> None:
    sid = new_segment_id()
    store.upsert_draft(make_draft(sid, text="turn left at the lights"))
    store.claim_overdue(time.time())
    upgrade = store.record_final(make_transcript(sid, text=""), reconcile)
    assert upgrade is not None
    assert (upgrade.text, upgrade.source, upgrade.reason, upgrade.version) == (
        "turn left at the lights", "edge", "cloud_empty", 3
    )  # fmt: skip


def test_unsent_deadline_finals_are_found_again(store: Store) -> None:
    sid = new_segment_id()
    store.upsert_draft(make_draft(sid))
    (late,) = store.claim_overdue(time.time())
    assert store.unsent_deadline_finals(time.time() - 60) == []  # just stored: its reconciler is sending it
    assert store.unsent_deadline_finals(time.time()) == [late]
    store.mark_published([late])
    assert store.unsent_deadline_finals(time.time()) == []


def test_the_deadline_scan_reads_its_index(store_url: str) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's planner scans a small table whole, index or not")
    s = Store(store_url)
    try:
        with s.engine.connect() as conn:
            plan = " ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT agent_id FROM segments WHERE final_published_at IS NULL"
                    " AND draft_stored_at <= 1.0 AND final_version IS NULL ORDER BY draft_stored_at LIMIT 500"
                )
            )
        assert "ix_segments_unpublished" in plan, plan
    finally:
        s.close()


def test_one_deadline_final_and_one_upgrade_when_two_reconcilers_race(store_url: str) -> None:
    """Two reconcilers, each scanning for overdue drafts and storing transcripts of the same
    segments at once: every segment gets exactly one version 2 and at most one version 3, and each
    final is returned to exactly one of them."""
    stores = [Store(store_url), Store(store_url)]
    ids = [new_segment_id() for _ in range(40)]
    for i, sid in enumerate(ids):
        stores[0].upsert_draft(make_draft(sid, seq=i, text=f"draft {i}"))
    won: list[list[tuple[str, int, str | None]]] = [[], []]
    start = threading.Barrier(2)

    def reconciler(n: int) -> None:
        start.wait()
        for i, sid in enumerate(ids):
            if i % 4 == n:  # now and then a deadline scan, between transcripts
                won[n] += [(f.segment_id, f.version, f.reason) for f in stores[n].claim_overdue(time.time(), 7)]
            final = stores[n].record_final(make_transcript(sid, seq=i, text=f"Cloud {i} by {n}."), reconcile)
            if final is not None:
                won[n].append((final.segment_id, final.version, final.reason))
        won[n] += [(f.segment_id, f.version, f.reason) for f in stores[n].claim_overdue(time.time())]

    threads = [threading.Thread(target=reconciler, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claims = won[0] + won[1]
    assert len(claims) == len(set(claims))
    for sid in ids:
        mine = sorted((v, r == "deadline") for s, v, r in claims if s == sid)
        assert mine in ([(2, False)], [(2, True), (3, False)]), (sid, mine)
        versions = [(v["version"], v["source"]) for v in stores[1].versions(("pi-1", sid))]
        assert versions in ([(1, "edge"), (2, "cloud")], [(1, "edge"), (2, "edge"), (3, "cloud")])
        seg = stores[1].get(("pi-1", sid))
        assert seg is not None and seg["final"] is not None and seg["final"]["source"] == "cloud"
    assert stores[0].counts() == {"segments": 40, "drafts": 40, "finals": 40}
    for s in stores:
        s.close()
