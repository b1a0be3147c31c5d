"""The on-disk outbox: a captured item is committed here before it is published, and deleted only
when the bridge's receipt says it is durably in Kafka. An item the bridge refused is not deleted
but *quarantined*: kept, with the bridge's reason, never sent again by itself, until an operator
has fixed the cause and resends it (``edgecap agent --resend-quarantined``).

SQLite in WAL mode with ``synchronous=FULL``: once :meth:`Outbox.append` returns, the row survives
a crash or a power cut. The per-agent ``seq`` is allocated in the same transaction, so sequence
numbers never repeat across restarts, even after the rows carrying them were deleted.

Each row remembers when it was last sent and when it is due again (the link's backoff), so
:meth:`Outbox.due` is a cheap indexed query; the payload is the last column, so reading a row's
state never walks its overflow pages. With a :class:`~edge_agent.quota.Quota` the outbox keeps
to a byte budget and applies the quota's policy when full (see :mod:`edge_agent.quota`);
quarantined rows count inside it, and under ``drop_oldest_audio`` the oldest of them are the first
to go (whole, counted as ``dropped_quarantined``), before any pending segment loses its audio.

A full or failing disk (``database or disk is full``, ``disk I/O error``) makes a write raise
:class:`OutboxUnavailable` (an append; counted in :attr:`Outbox.append_failed`) or
:class:`sqlite3.Error` (the link's bookkeeping); nothing is half-written, the connection stays
usable, and the same calls succeed again once space returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent import outbox_db
from edge_agent.outbox_db import disk_refused, rollback, transaction
from edge_agent.quota import RESUME_FRACTION, FullPolicy, OutboxFull, Quota, strip_audio

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(outbox_db.COLUMNS)
_PENDING = "quarantined_at IS NULL"
QUOTA_COUNTERS = ("dropped_audio_segments", "dropped_audio_bytes", "refused_segments")
QUARANTINE_COUNTERS = ("quarantined_total", "resent_quarantined", "dropped_quarantined")
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


@dataclass(frozen=True)
class Quarantined:
    """A stored item the bridge refused: kept, never sent again by itself."""

    seq: int
    segment_id: str
    topic: str
    created_at: float
    quarantined_at: float
    reason: str
    detail: str
    attempts: int
    size: int

    def to_record(self) -> dict[str, object]:
        return {"seq": self.seq, "segment_id": self.segment_id, "topic": self.topic, "created_at": self.created_at,
                "quarantined_at": self.quarantined_at, "reason": self.reason, "detail": self.detail,
                "attempts": self.attempts, "size": self.size}


class OutboxUnavailable(Exception):
    """The disk refused an append (full, I/O error): the item is not stored; counted."""


class Outbox:
    """A durable FIFO of encoded messages, keyed by ``segment_id``; safe to share between threads."""

    def __init__(self, path: Path | str, quota: Quota | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quota = quota
        self._lock = threading.Lock()
        self._full = False
        self._last_size = 0  # of the latest message offered: the flag drops once one more fits with margin
        self.append_failed = 0  # appends the disk refused since this object was made (counted in memory:
        # the disk that refused them cannot hold the count either)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only (else: migrate)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.execute("PRAGMA busy_timeout=10000")
        outbox_db.migrate(self._db, self.path)
        outbox_db.create(self._db)
        (used,) = self._db.execute("SELECT coalesce(sum(size), 0) FROM outbox").fetchone()
        self._bytes = int(used)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ----------------------------------------------------------------------------

    def append(self, segment_id: str, topic: str, build: Callable[[int], bytes], *, audio_bytes: int = 0) -> int:
        """Allocate the next ``seq``, store ``build(seq)`` durably, and return the seq.

        ``build`` turns the seq into the wire bytes (the seq is part of the envelope).
        ``audio_bytes`` says how much of it is audio the quota policy may drop (a segment's PCM).
        Raises :class:`~edge_agent.quota.OutboxFull` when the quota policy refuses the item, and
        :class:`OutboxUnavailable` when the disk does (full, I/O error; counted in
        :attr:`append_failed`); the seq is then not used.
        """
        reclaim = False
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()
                seq = row[0] if row else 0
                payload = build(seq)
                if self.quota is not None:
                    payload, audio_bytes, reclaim = self._make_room(seq, payload, audio_bytes)
                self._db.execute(
                    f"INSERT INTO outbox({_COLUMNS}) VALUES (?,?,?,?,NULL,NULL,0,?,?,NULL,NULL,NULL,?)",
                    (seq, segment_id, topic, time.time(), len(payload), audio_bytes, payload),
                )
                self._set_counter("next_seq", seq + 1)
                self._db.execute("COMMIT")
            except OutboxFull:
                try:
                    self._db.execute("COMMIT")  # keep the counters and any audio already dropped
                except sqlite3.Error as exc:
                    self._refused_by_disk(exc)
                    raise OutboxUnavailable(f"the disk refused the outbox's counters: {exc}") from exc
                finally:
                    self._bytes = self._stored_bytes()
                raise
            except sqlite3.Error as exc:
                if not disk_refused(exc):
                    rollback(self._db)
                    self._bytes = self._stored_bytes()
                    raise
                self._refused_by_disk(exc)
                raise OutboxUnavailable(f"{segment_id} not stored: {exc}") from exc
            except BaseException:
                rollback(self._db)
                self._bytes = self._stored_bytes()
                raise
            self._bytes += len(payload)
        if reclaim:
            self.reclaim()
        return seq

    def _refused_by_disk(self, exc: sqlite3.Error) -> None:
        """After a write the disk refused: roll back, recount, count the failure (lock held)."""
        rollback(self._db)
        self.append_failed += 1
        self._bytes = self._stored_bytes()
        log.error("outbox append failed (%d so far): %s", self.append_failed, exc)

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
            while self._bytes + len(payload) > room and self._drop_oldest_quarantined():
                freed = True
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

    def _drop_oldest_quarantined(self) -> bool:
        """Delete the oldest quarantined row (refused, so the first to go); False if none."""
        row = self._db.execute(
            f"DELETE FROM outbox WHERE seq = (SELECT seq FROM outbox WHERE NOT {_PENDING} ORDER BY seq LIMIT 1) "
            "RETURNING seq, segment_id, size, reason"
        ).fetchone()
        if row is None:
            return False
        seq, segment_id, size, reason = row
        self._bytes -= size
        self._add_counter("dropped_quarantined", 1)
        log.warning("outbox quota: dropped quarantined seq %d (%s, refused as %s)", seq, segment_id, reason)
        return True

    def _strip_oldest(self) -> bool:
        """Replace the audio of the oldest entry that still has some with empty PCM; False if none."""
        row = self._db.execute(
            f"SELECT seq, size, audio_bytes, payload FROM outbox WHERE audio_bytes > 0 AND {_PENDING} "
            "ORDER BY seq LIMIT 1"
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
            removed, freed = 0, 0
            try:
                with transaction(self._db):
                    for sid in ids:
                        row = self._db.execute("DELETE FROM outbox WHERE segment_id=? RETURNING size",
                                               (sid,)).fetchone()
                        if row is not None:
                            removed, freed = removed + 1, freed + row[0]
            except BaseException:
                self._bytes = self._stored_bytes()
                raise
            self._bytes -= freed
        if removed:
            self.reclaim()
        return removed

    def reclaim(self) -> None:
        """Give the pages of deleted or shrunk rows back to the file system (on a full disk this can
        fail: the pages stay free inside the file and the next call returns them)."""
        with self._lock:
            try:
                self._db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
            except sqlite3.Error as exc:
                rollback(self._db)
                log.warning("outbox: cannot give free pages back to the file system now: %s", exc)

    # --- quarantine -------------------------------------------------------------------------

    def quarantine(self, refusals: Iterable[tuple[str, str, str]]) -> int:
        """Keep refused items, ``(segment_id, reason, detail)``, out of delivery; returns how many
        were newly quarantined (an item already in quarantine, or gone, is left as it is)."""
        wanted = list(refusals)
        now = time.time()
        done = 0
        with self._lock, transaction(self._db):
            for segment_id, reason, detail in wanted:
                row = self._db.execute(
                    f"UPDATE outbox SET quarantined_at=?, reason=?, detail=?, next_at=NULL "
                    f"WHERE segment_id=? AND {_PENDING} RETURNING seq",
                    (now, reason, detail, segment_id),
                ).fetchone()
                done += row is not None
            if done:
                self._add_counter("quarantined_total", done)
        return done

    def resend_quarantined(self) -> int:
        """Make every quarantined item due again, as if never sent (the operator fixed the cause);
        returns how many. They go out in ``seq`` order with the rest."""
        with self._lock, transaction(self._db):
            (n,) = self._db.execute(f"SELECT count(*) FROM outbox WHERE NOT {_PENDING}").fetchone()
            self._db.execute(
                "UPDATE outbox SET quarantined_at=NULL, reason=NULL, detail=NULL, sent_at=NULL, next_at=NULL, "
                f"attempts=0 WHERE NOT {_PENDING}"
            )
            if n:
                self._add_counter("resent_quarantined", n)
        if n:
            log.info("outbox: %d quarantined items released for sending again", n)
        return int(n)

    def quarantined(self) -> list[Quarantined]:
        """The quarantined items, oldest first (their payloads are not read)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, segment_id, topic, created_at, quarantined_at, coalesce(reason, ''), "
                f"coalesce(detail, ''), attempts, size FROM outbox WHERE NOT {_PENDING} ORDER BY seq"
            ).fetchall()
        return [Quarantined(*row) for row in rows]

    def quarantined_count(self) -> int:
        with self._lock:
            (n,) = self._db.execute(f"SELECT count(*) FROM outbox WHERE NOT {_PENDING}").fetchone()
        return int(n)

    # --- delivery state ---------------------------------------------------------------------

    def due(self, limit: int, resend_after_s: float | None = None) -> list[Entry]:
        """Entries to publish now, in seq order: never sent, or past their resend time (never a
        quarantined one).

        With ``resend_after_s``, anything sent at least that long ago counts as due as well.
        """
        now = time.time()
        cutoff = now - resend_after_s if resend_after_s is not None else -1.0
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, segment_id, topic, payload, created_at, attempts FROM outbox "
                f"WHERE {_PENDING} AND (sent_at IS NULL OR next_at <= ? OR sent_at <= ?) ORDER BY seq LIMIT ?",
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
            self._db.execute(f"UPDATE outbox SET sent_at=NULL, next_at=NULL WHERE sent_at IS NOT NULL AND {_PENDING}")

    # --- state ------------------------------------------------------------------------------

    def depth(self) -> int:
        """Items waiting for delivery (quarantined ones are not: see :meth:`quarantined_count`)."""
        with self._lock:
            (n,) = self._db.execute(f"SELECT count(*) FROM outbox WHERE {_PENDING}").fetchone()
        return int(n)

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute(f"SELECT created_at FROM outbox WHERE {_PENDING} ORDER BY seq LIMIT 1").fetchone()
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
        return self._read_counters(QUOTA_COUNTERS)

    def quarantine_counters(self) -> dict[str, int]:
        """Segments ever quarantined, released again by an operator, and deleted by the quota
        policy while in quarantine, over the life of this outbox file."""
        return self._read_counters(QUARANTINE_COUNTERS)

    def _read_counters(self, names: tuple[str, ...]) -> dict[str, int]:
        with self._lock:
            rows = dict(self._db.execute(
                f"SELECT name, value FROM counters WHERE name IN ({','.join('?' * len(names))})", names
            ).fetchall())
        return {name: int(rows.get(name, 0)) for name in names}
