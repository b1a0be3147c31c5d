"""The on-disk outbox: a captured item is committed here before it is published, and deleted only
when the bridge's receipt says it is durably in Kafka (or refused for good).

SQLite in WAL mode with ``synchronous=FULL``: once :meth:`Outbox.append` returns, the row survives
a crash or a power cut. The per-agent ``seq`` is allocated in the same transaction, so sequence
numbers never repeat across restarts, even after the rows carrying them were deleted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY,
    segment_id  TEXT    NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    created_at  REAL    NOT NULL,
    sent_at     REAL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    seq: int
    segment_id: str
    topic: str
    payload: bytes
    created_at: float
    attempts: int


class Outbox:
    """A durable FIFO of encoded messages, keyed by ``segment_id``; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, segment_id: str, topic: str, build: Callable[[int], bytes]) -> int:
        """Allocate the next ``seq``, store ``build(seq)`` durably, and return the seq.

        ``build`` turns the seq into the wire bytes (the seq is part of the envelope).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()
                seq = row[0] if row else 0
                self._db.execute(
                    "INSERT INTO outbox(seq, segment_id, topic, payload, created_at) VALUES (?,?,?,?,?)",
                    (seq, segment_id, topic, build(seq), time.time()),
                )
                self._db.execute(
                    "INSERT INTO counters(name, value) VALUES ('next_seq', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (seq + 1,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def due(self, limit: int, resend_after_s: float) -> list[Entry]:
        """Entries to publish now, in seq order: never sent, or sent without a receipt for too long."""
        cutoff = time.time() - resend_after_s
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, segment_id, topic, payload, created_at, attempts FROM outbox "
                "WHERE sent_at IS NULL OR sent_at < ? ORDER BY seq LIMIT ?",
                (cutoff, limit),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def in_flight(self, resend_after_s: float) -> int:
        """How many entries were sent recently and still wait for a receipt."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT count(*) FROM outbox WHERE sent_at >= ?", (time.time() - resend_after_s,)
            ).fetchone()
        return int(n)

    def mark_sent(self, seqs: Iterable[int]) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "UPDATE outbox SET sent_at=?, attempts=attempts+1 WHERE seq=?", [(now, s) for s in seqs]
            )

    def mark_all_unsent(self) -> None:
        """After a reconnect: resend everything not yet receipted, in seq order."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_at=NULL")

    def remove(self, segment_ids: Iterable[str]) -> int:
        """Delete receipted entries; returns how many were still here."""
        ids = list(segment_ids)
        with self._lock:
            cur = self._db.executemany("DELETE FROM outbox WHERE segment_id=?", [(i,) for i in ids])
        return cur.rowcount

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def oldest_age_s(self) -> float:
        with self._lock:
            (oldest,) = self._db.execute("SELECT min(created_at) FROM outbox").fetchone()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def next_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()
        return int(row[0]) if row else 0
