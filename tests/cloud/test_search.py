"""Finding segments (``cloud.search``): words, site, agent, time, state and pages by cursor, on
SQLite and on a real PostgreSQL (where the GIN index of migration 0010 serves the words)."""

from __future__ import annotations

import time

import pytest

from cloud.rule import reconcile
from cloud.search import BadCursor
from cloud.store import Store
from contracts import Status, new_segment_id
from tests.cloud.test_store import T0, make_draft, make_transcript


def fill(store: Store) -> dict[str, tuple[str, str]]:
    """Six segments on two sites' agents and one agent with no status; some with finals."""
    now = time.time()
    store.record_status(Status(agent_id="pi-kitchen", online=True, at=now, site="home"))
    store.record_status(Status(agent_id="pi-lab", online=True, at=now, site="lab"))
    made = {}
    plan = [
        ("pi-kitchen", 1, "turn the oven off", "Turn the oven off."),
        ("pi-kitchen", 2, "the kettle is boiling", None),
        ("pi-lab", 3, "centrifuge spinning", "The centrifuge is spinning."),
        ("pi-lab", 4, "oven at two hundred", "Oven at two hundred degrees."),
        ("pi-nosite", 5, "hello from nowhere", "Hello from nowhere."),
        ("pi-lab", 6, "", "Quiet please."),
    ]
    for agent, seq, draft, final in plan:
        sid = new_segment_id()
        store.upsert_draft(make_draft(sid, seq, draft, agent_id=agent))
        if final is not None:
            store.record_final(make_transcript(sid, seq, final, agent_id=agent), reconcile)
        made[f"{agent}#{seq}"] = (agent, sid)
    return made


def seqs(rows: list) -> list[int]:
    return [r["seq"] for r in rows]


def test_filters_combine_and_rows_carry_their_site(store: Store) -> None:
    fill(store)
    assert seqs(store.search_segments().rows) == [6, 5, 4, 3, 2, 1]  # newest first
    assert seqs(store.search_segments(q="oven").rows) == [4, 1]  # final or draft, any case
    assert seqs(store.search_segments(q="OVEN degrees").rows) == [4]  # every word
    assert seqs(store.search_segments(q="kettle").rows) == [2]  # a draft's word
    assert seqs(store.search_segments(q="ove").rows) in ([], [4, 1])  # PostgreSQL: whole words only
    assert seqs(store.search_segments(site="lab").rows) == [6, 4, 3]
    assert seqs(store.search_segments(site="lab", q="oven").rows) == [4]
    assert seqs(store.search_segments(agent_id="pi-kitchen").rows) == [2, 1]
    assert seqs(store.search_segments(state="draft").rows) == [2]
    assert seqs(store.search_segments(state="final").rows) == [6, 5, 4, 3, 1]
    assert seqs(store.search_segments(since=T0 + 30, until=T0 + 50).rows) == [4, 3]
    sites = {r["seq"]: r["site"] for r in store.search_segments().rows}
    assert sites == {1: "home", 2: "home", 3: "lab", 4: "lab", 5: None, 6: "lab"}
    one = store.search_segments(q="nowhere").rows[0]
    got = store.get((one["agent_id"], one["segment_id"]))
    assert got == one  # one row, whichever way it is read
    assert store.search_segments(q="'; drop table segments; --").rows == []
    assert store.counts()["segments"] == 6


def test_pages_by_cursor_neither_repeat_nor_skip_while_rows_arrive(store: Store) -> None:
    fill(store)
    first = store.search_segments(limit=4)
    assert seqs(first.rows) == [6, 5, 4, 3] and first.next_cursor
    store.upsert_draft(make_draft(new_segment_id(), 7, "a new one", agent_id="pi-lab"))  # arrives meanwhile
    second = store.search_segments(limit=4, cursor=first.next_cursor)
    assert seqs(second.rows) == [2, 1] and second.next_cursor is None
    assert store.search_segments(limit=6).next_cursor is not None  # 7 rows now
    with pytest.raises(BadCursor):
        store.search_segments(cursor="not-a-cursor")


def test_postgresql_searches_words_through_the_index(store: Store) -> None:
    if store.dialect != "postgresql":
        pytest.skip("SQLite searches without an index")
    fill(store)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # a table this small is otherwise read whole
        plan = " ".join(r[0] for r in conn.exec_driver_sql(
            "EXPLAIN SELECT segment_id FROM segments WHERE to_tsvector('simple', coalesce(final_text, '') || ' '"
            " || coalesce(draft_text, '')) @@ websearch_to_tsquery('simple', 'oven')"))  # fmt: skip
    assert "ix_segments_search" in plan, plan
    assert seqs(store.search_segments(q='"two hundred" -kettle').rows) == [4]  # a phrase, a word left out
