"""The outbox: durable, ordered, seq never reused, deleted only by receipts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_agent.outbox import Outbox


def fill(box: Outbox, n: int, prefix: str = "s") -> list[int]:
    return [box.append(f"{prefix}{i}", "t/segments", lambda seq: f"payload-{seq}".encode()) for i in range(n)]


def test_append_assigns_increasing_seq_in_the_payload(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert fill(box, 5) == [0, 1, 2, 3, 4]
    entries = box.due(10, resend_after_s=5)
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]
    assert entries[2].payload == b"payload-2"
    assert box.depth() == 5


def test_seq_survives_reopen_and_deletion(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    fill(box, 3)
    assert box.remove(["s0", "s1", "s2"]) == 3
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.depth() == 0
    assert fill(box, 1, "t") == [3]


def test_sent_entries_wait_for_receipt_then_resend(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    fill(box, 3)
    box.mark_sent([0, 1])
    assert [e.seq for e in box.due(10, resend_after_s=60)] == [2]
    assert box.in_flight(60) == 2
    assert [e.seq for e in box.due(10, resend_after_s=0)] == [0, 1, 2]  # overdue: resend
    box.mark_all_unsent()
    assert box.in_flight(60) == 0
    assert [e.attempts for e in box.due(10, 60)] == [1, 1, 0]


def test_remove_counts_only_present_rows(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    fill(box, 2)
    assert box.remove(["s1", "nope"]) == 1
    assert box.remove(["s1"]) == 0
    assert [e.segment_id for e in box.due(10, 1)] == ["s0"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")

    def boom(seq: int) -> bytes:
        raise RuntimeError("encoder failed")

    try:
        box.append("x", "t", boom)
    except RuntimeError:
        pass
    assert box.depth() == 0
    assert fill(box, 1) == [0]


def test_database_is_wal_and_intact(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.db").close()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
