"""The on-disk outbox: a captured item is committed here before it is published, and deleted only
when the bridge's receipt says it is durably in Kafka (or refused for good).

SQLite in WAL mode with ``synchronous=FULL``: once :meth:`Outbox.append` returns, the row survives
a crash or a power cut. The per-agent ``seq`` is allocated in the same transaction, so sequence
numbers never repeat across restarts, even after the rows carrying them were deleted.

Each row remembers when it was last sent and when it is due again (the link's backoff), so
:meth:`Outbox.due` is a cheap indexed query; the payload is the last column, so reading a row's
state never walks its overflow pages. With a :class:`~edge_agent.quota.Quota` the outbox keeps
to a byte budget and applies the quota's policy when full (see :mod:`edge_agent.quota`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.quota import RESUME_FRACTION, FullPolicy, OutboxFull, Quota, strip_audio

log = logging.getLogger(__name__)

_COLUMNS = "seq, segment_id, topic, created_at, sent_at, next_at, attempts, size, audio_bytes, payload"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY,
    segment_id  TEXT    NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    sent_at     REAL,
    next_at     REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    size        INTEGER NOT NULL DEFAULT 0,
    audio_bytes INTEGER NOT NULL DEFAULT 0,
    payload     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_next_at ON outbox(next_at);
CREATE INDEX IF NOT EXISTS outbox_size ON outbox(size, audio_bytes);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
QUOTA_COUNTERS = ("dropped_audio_segments", "dropped_audio_bytes", "refused_segments")
WAL_LIMIT_BYTES = 8 * 1024 * 1024
"""The WAL file is truncated back to this size after a checkpoint."""


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

    def __init__(self, path: Path | str, quota: Quota | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quota = quota
        self._lock = threading.Lock()
        self._full = False
        self._last_size = 0  # of the latest message offered: the flag drops once one more fits with margin
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only (else: _migrate)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        (used,) = self._db.execute("SELECT coalesce(sum(size), 0) FROM outbox").fetchone()
        self._bytes = int(used)

    def _migrate(self) -> None:
        """Bring a file made by an older version to the current layout, atomically."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(outbox)")]
        if columns and "audio_bytes" not in columns:
            log.info("migrating outbox %s to the current layout", self.path)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("ALTER TABLE outbox RENAME TO outbox_old")
                self._db.execute(_SCHEMA.split(";")[0])
                self._db.execute(
                    f"INSERT INTO outbox({_COLUMNS}) SELECT seq, segment_id, topic, created_at, NULL, NULL, "
                    "attempts, length(payload), 0, payload FROM outbox_old"
                )
                self._db.execute("DROP TABLE outbox_old")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")  # an older file: switch it to incremental vacuum once

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ----------------------------------------------------------------------------

    def append(self, segment_id: str, topic: str, build: Callable[[int], bytes], *, audio_bytes: int = 0) -> int:
        """Allocate the next ``seq``, store ``build(seq)`` durably, and return the seq.

        ``build`` turns the seq into the wire bytes (the seq is part of the envelope).
        ``audio_bytes`` says how much of it is audio the quota policy may drop (a segment's PCM).
        Raises :class:`~edge_agent.quota.OutboxFull` when the quota policy refuses the item; the
        seq is then not used.
        """
        reclaim = False
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()
                seq = row[0] if row else 0
                payload = build(seq)
                if self.quota is not None:
                    payload, audio_bytes, reclaim = self._make_room(seq, payload, audio_bytes)
                self._db.execute(
                    f"INSERT INTO outbox({_COLUMNS}) VALUES (?,?,?,?,NULL,NULL,0,?,?,?)",
                    (seq, segment_id, topic, time.time(), len(payload), audio_bytes, payload),
                )
                self._set_counter("next_seq", seq + 1)
                self._db.execute("COMMIT")
            except OutboxFull:
                self._db.execute("COMMIT")  # keep the counters and any audio already dropped
                self._bytes = self._stored_bytes()
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = self._stored_bytes()
                raise
            self._bytes += len(payload)
        if reclaim:
            self.reclaim()
        return seq

    def _make_room(self, seq: int, payload: bytes, audio_bytes: int) -> tuple[bytes, int, bool]:
        """Apply the quota policy inside the append transaction: the payload to store, its audio
        bytes, and whether space was freed (then the file should be vacuumed)."""
        assert self.quota is not None
        room = self.quota.room(self._bytes, self.path.parent)
        self._last_size = len(payload)
        if self._bytes + len(payload) <= room:
            if self._full and self._bytes + len(payload) <= RESUME_FRACTION * room:
                log.info("outbox quota: room again (%d of %d bytes used)", self._bytes, room)
                self._full = False
            return payload, audio_bytes, False
        if not self._full:
            log.warning("outbox quota reached (%d + %d > %d bytes): applying %s",
                        self._bytes, len(payload), room, self.quota.policy.value)
        self._full = True
        freed = False
        if self.quota.policy is FullPolicy.DROP_OLDEST_AUDIO:
            while self._bytes + len(payload) > room and self._strip_oldest():
                freed = True
            if self._bytes + len(payload) <= room:
                return payload, audio_bytes, freed
            stripped = strip_audio(payload) if audio_bytes else None
            if stripped is not None and self._bytes + len(stripped) <= room:
                self._count_dropped(audio_bytes)
                log.info("outbox quota: seq %d stored without its %d bytes of audio", seq, audio_bytes)
                return stripped, 0, freed
        self._add_counter("refused_segments", 1)
        raise OutboxFull(
            f"outbox full ({self._bytes} of {room} bytes, policy {self.quota.policy.value}): seq {seq} refused"
        )

    def _strip_oldest(self) -> bool:
        """Replace the audio of the oldest entry that still has some with empty PCM; False if none."""
        row = self._db.execute(
            "SELECT seq, size, audio_bytes, payload FROM outbox WHERE audio_bytes > 0 ORDER BY seq LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        seq, size, audio, payload = row
        stripped = strip_audio(payload)
        if stripped is None:  # not a segment after all: nothing to strip there
            self._db.execute("UPDATE outbox SET audio_bytes=0 WHERE seq=?", (seq,))
            return True
        self._db.execute("UPDATE outbox SET payload=?, size=?, audio_bytes=0 WHERE seq=?",
                         (stripped, len(stripped), seq))
        self._bytes += len(stripped) - size
        self._count_dropped(audio)
        log.info("outbox quota: dropped %d bytes of audio of seq %d", audio, seq)
        return True

    def _count_dropped(self, audio_bytes: int) -> None:
        self._add_counter("dropped_audio_segments", 1)
        self._add_counter("dropped_audio_bytes", audio_bytes)

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    def _add_counter(self, name: str, delta: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
            (name, delta),
        )

    def _stored_bytes(self) -> int:
        (used,) = self._db.execute("SELECT coalesce(sum(size), 0) FROM outbox").fetchone()
        return int(used)

    def remove(self, segment_ids: Iterable[str]) -> int:
        """Delete receipted entries; returns how many were still here."""
        ids = list(segment_ids)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                for sid in ids:
                    row = self._db.execute("DELETE FROM outbox WHERE segment_id=? RETURNING size", (sid,)).fetchone()
                    if row is not None:
                        removed += 1
                        self._bytes -= row[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = self._stored_bytes()
                raise
        if removed:
            self.reclaim()
        return removed

    def reclaim(self) -> None:
        """Give the pages of deleted or shrunk rows back to the file system."""
        with self._lock:
            self._db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only

    # --- delivery state ---------------------------------------------------------------------

    def due(self, limit: int, resend_after_s: float | None = None) -> list[Entry]:
        """Entries to publish now, in seq order: never sent, or past their resend time.

        With ``resend_after_s``, anything sent at least that long ago counts as due as well.
        """
        now = time.time()
        cutoff = now - resend_after_s if resend_after_s is not None else -1.0
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, segment_id, topic, payload, created_at, attempts FROM outbox "
                "WHERE sent_at IS NULL OR next_at <= ? OR sent_at <= ? ORDER BY seq LIMIT ?",
                (now, cutoff, limit),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def in_flight(self) -> int:
        """How many entries were sent and still wait for a receipt before their resend time."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE next_at > ?", (time.time(),)).fetchone()
        return int(n)

    def next_due_in_s(self) -> float | None:
        """Seconds until the earliest resend time of an entry in flight (None if none waits)."""
        with self._lock:
            (at,) = self._db.execute("SELECT min(next_at) FROM outbox").fetchone()
        return None if at is None else max(0.0, at - time.time())

    def mark_sent(self, seqs: Iterable[int], retry_in_s: float | Callable[[int], float] = 10.0) -> None:
        """Record a publish of ``seqs``; each is due again after ``retry_in_s`` seconds, or
        ``retry_in_s(attempt)`` with ``attempt`` = 1 for the first send (the link's backoff)."""
        wanted = list(seqs)
        now = time.time()
        with self._lock:
            attempts = dict(
                self._db.execute(
                    f"SELECT seq, attempts FROM outbox WHERE seq IN ({','.join('?' * len(wanted))})", wanted
                ).fetchall()
            ) if wanted else {}
            updates = []
            for seq, done in attempts.items():
                wait = retry_in_s(done + 1) if callable(retry_in_s) else retry_in_s
                updates.append((now, now + wait, seq))
            self._db.executemany("UPDATE outbox SET sent_at=?, next_at=?, attempts=attempts+1 WHERE seq=?", updates)

    def mark_all_unsent(self) -> None:
        """After a reconnect: resend everything not yet receipted, in seq order."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_at=NULL, next_at=NULL WHERE sent_at IS NOT NULL")

    # --- state ------------------------------------------------------------------------------

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return 0.0 if row is None else max(0.0, time.time() - row[0])

    def next_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()
        return int(row[0]) if row else 0

    def stored_bytes(self) -> int:
        """Bytes of the stored messages (what the quota counts)."""
        with self._lock:
            return self._bytes

    def file_bytes(self) -> int:
        """Bytes of the database file in use (pages minus free pages; the WAL not included)."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def quota_full(self) -> bool:
        """Whether the quota policy is in force; drops by itself once there is room for one more
        message like the latest with :data:`~edge_agent.quota.RESUME_FRACTION` margin."""
        if self.quota is None:
            return False
        with self._lock:
            room = self.quota.room(self._bytes, self.path.parent)
            if self._full and self._bytes + self._last_size <= RESUME_FRACTION * room:
                log.info("outbox quota: room again (%d bytes used)", self._bytes)
                self._full = False
            return self._full

    def counters(self) -> dict[str, int]:
        """What the quota policy did, over the life of this outbox file."""
        with self._lock:
            rows = dict(self._db.execute(
                f"SELECT name, value FROM counters WHERE name IN ({','.join('?' * len(QUOTA_COUNTERS))})",
                QUOTA_COUNTERS,
            ).fetchall())
        return {name: int(rows.get(name, 0)) for name in QUOTA_COUNTERS}
