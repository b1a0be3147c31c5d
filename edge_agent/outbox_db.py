"""The outbox's SQLite file: its layout, how a file made by an older version is brought up to
it, transactions, and how to tell a refusing disk from a wrong statement.

One table of messages and one of counters. The payload is the last column of a row, so a query on
a row's state (due, in flight, quarantined) never walks the payload's overflow pages; that is why a
migration rebuilds the table rather than appending columns with ``ALTER TABLE ADD COLUMN`` (those
would land after the payload).

A row whose segment the bridge refused stays in the table, *quarantined*: ``quarantined_at`` is the
time of the refusal and ``reason``/``detail`` are the bridge's words; the link never sends it again
by itself (see :meth:`edge_agent.outbox.Outbox.quarantine`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = (
    "seq", "segment_id", "topic", "created_at", "sent_at", "next_at", "attempts", "size", "audio_bytes",
    "quarantined_at", "reason", "detail", "payload",
)
TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    seq            INTEGER PRIMARY KEY,
    segment_id     TEXT    NOT NULL UNIQUE,
    topic          TEXT    NOT NULL,
    created_at     REAL    NOT NULL,
    sent_at        REAL,
    next_at        REAL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    size           INTEGER NOT NULL DEFAULT 0,
    audio_bytes    INTEGER NOT NULL DEFAULT 0,
    quarantined_at REAL,
    reason         TEXT,
    detail         TEXT,
    payload        BLOB    NOT NULL
)"""
SCHEMA = (
    TABLE,
    "CREATE INDEX IF NOT EXISTS outbox_next_at ON outbox(next_at)",
    "CREATE INDEX IF NOT EXISTS outbox_size ON outbox(size, audio_bytes)",
    "CREATE INDEX IF NOT EXISTS outbox_quarantined ON outbox(quarantined_at) WHERE quarantined_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

# What a column of a row copied from an older layout gets when that layout lacks it. A copied row
# is due again at once (the link resends everything unreceipted after a start anyway).
_MISSING = {"sent_at": "NULL", "next_at": "NULL", "attempts": "0", "size": "length(payload)", "audio_bytes": "0",
            "quarantined_at": "NULL", "reason": "NULL", "detail": "NULL"}


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back if anything in it (the commit included) fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the transaction if one is still open. SQLite itself rolls back on some errors
    (``database or disk is full``); a second ROLLBACK would raise and hide the first error."""
    if db.in_transaction:
        db.execute("ROLLBACK")


# SQLite's primary result codes of a disk that refuses writes: full, I/O error, cannot open a file
# (the WAL, the journal), read-only (remounted after errors), busy/locked (another writer)
_DISK_CODES = frozenset({
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
})


def disk_refused(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the disk refused a write (as opposed to a wrong statement: a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DISK_CODES


def create(db: sqlite3.Connection) -> None:
    """Create what is missing of the current layout, in one transaction."""
    with transaction(db):
        for statement in SCHEMA:
            db.execute(statement)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a file made by an older version to the current layout, atomically, keeping its rows.

    Known older layouts: the first (no ``size``/``audio_bytes``, payload in the middle) and the one
    before quarantine (no ``quarantined_at``/``reason``/``detail``)."""
    present = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
    if present and set(COLUMNS) - set(present):
        log.info("migrating outbox %s to the current layout (adding %s)", path,
                 ", ".join(c for c in COLUMNS if c not in present))
        copied = ", ".join(
            "NULL" if c in ("sent_at", "next_at") else c if c in present else _MISSING[c] for c in COLUMNS
        )
        with transaction(db):
            db.execute("ALTER TABLE outbox RENAME TO outbox_old")
            for index in ("outbox_next_at", "outbox_size", "outbox_quarantined"):
                db.execute(f"DROP INDEX IF EXISTS {index}")
            db.execute(TABLE)
            db.execute(f"INSERT INTO outbox({', '.join(COLUMNS)}) SELECT {copied} FROM outbox_old")
            db.execute("DROP TABLE outbox_old")
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")  # an older file: switch it to incremental vacuum once

