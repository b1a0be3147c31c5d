"""The outbox: durable, ordered, seq never reused, deleted only by receipts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_agent.link import Backoff
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
    box.mark_sent([0, 1], retry_in_s=60)
    assert [e.seq for e in box.due(10)] == [2]
    assert box.in_flight() == 2
    assert 59 < (box.next_due_in_s() or 0) <= 60
    assert [e.seq for e in box.due(10, resend_after_s=0)] == [0, 1, 2]  # forced: everything sent is due
    box.mark_all_unsent()
    assert box.in_flight() == 0 and box.next_due_in_s() is None
    assert [e.attempts for e in box.due(10)] == [1, 1, 0]


def test_each_entry_backs_off_by_its_own_attempt_count(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    fill(box, 2)
    waits: list[int] = []

    def backoff(attempt: int) -> float:
        waits.append(attempt)
        return 0.0 if attempt >= 3 else 3600.0

    box.mark_sent([0], backoff)
    box.mark_sent([0, 1], backoff)  # seq 0 for the second time, seq 1 for the first
    assert waits == [1, 2, 1]
    assert box.due(10) == [] and box.in_flight() == 2
    box.mark_sent([0], backoff)  # third send: due again at once
    assert [(e.seq, e.attempts) for e in box.due(10)] == [(0, 3)]


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base_s=2.0, cap_s=60.0, jitter=0.2)
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (40, 60.0)]:
        waits = [backoff(attempt) for _ in range(200)]
        assert all(0.8 * nominal <= w <= 1.2 * nominal for w in waits), attempt
        assert max(waits) - min(waits) > 0.1 * nominal  # really jittered


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


def test_the_outbox_connection_really_syncs_fully(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL (NORMAL is 1)
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


def test_receipts_give_the_space_back_to_the_file_system(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(40):
        box.append(f"s{i}", "t", lambda seq: bytes(50_000))
    assert box.stored_bytes() == 40 * 50_000
    full = box.file_bytes()
    assert full >= 40 * 50_000
    box.remove([f"s{i}" for i in range(38)])
    assert box.stored_bytes() == 2 * 50_000
    assert box._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert box.file_bytes() < full / 10
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert (tmp_path / "o.db").stat().st_size < full / 10


def test_an_outbox_of_the_first_layout_is_migrated_with_its_rows(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    db.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, segment_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, created_at REAL NOT NULL, sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO outbox VALUES (7, 'old7', 't', x'0102', 1.0, 5.0, 2);"
        "INSERT INTO counters VALUES ('next_seq', 8);"
    )
    db.close()
    box = Outbox(tmp_path / "o.db")
    [entry] = box.due(10)
    assert (entry.seq, entry.segment_id, entry.payload, entry.attempts) == (7, "old7", b"\x01\x02", 2)
    assert box.stored_bytes() == 2 and box.next_seq() == 8
    assert box._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert fill(box, 1, "new") == [8]
