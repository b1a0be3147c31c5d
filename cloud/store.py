"""The caption store: one row per segment (edge draft and final caption) plus every caption version.

SQLite by default (a file in WAL mode), PostgreSQL by URL. Every row is keyed by device and segment,
(``agent_id``, ``segment_id``): two devices that choose the same ``segment_id`` never share a row
(:meth:`Store.collides` tells the reconciler, which counts it). Exactly one final per segment is
guaranteed by the database, not by reading first: the final is claimed with
``UPDATE … WHERE final_version IS NULL`` and versions are inserted with ``ON CONFLICT DO NOTHING``,
so two reconcilers racing on the same transcript store one final and the loser sees a duplicate.
Drafts and transcripts may arrive in either order; whichever comes first creates the row.

The schema is made and upgraded by alembic (:mod:`cloud.migrations`, :func:`migrate`), at every
start, under a lock, so an existing SQLite or PostgreSQL store upgrades in place; the tables of
:mod:`cloud.tables` are the schema the newest migration produces.

Every value that decodes fits its column (the limits of :mod:`contracts.bounds`): integers are
64-bit (``BIGINT`` on PostgreSQL; SQLite's ``INTEGER`` is 64-bit whatever the declared type, so a
store created before these types holds the same values), ids and model names are at least as long
as the contract allows, texts are ``TEXT``, times are double precision.

The store persists, the reconciler decides: which text becomes the final is the rule the reconciler
passes to :meth:`Store.record_final` (:mod:`cloud.rule`), applied to the draft stored at the moment
the final is claimed, in the same transaction. With the final the store keeps how it was made
(:mod:`cloud.provenance`: the reason, the draft and cloud words aligned, each word's model and
probability, the draft's disagreement with the final), aggregated by :meth:`Store.disagreement`.

The deadline (:meth:`Store.claim_overdue`): a draft without a final ``final_deadline_s`` after it
was stored (``draft_stored_at``, the cloud's clock: a device's may be a day off) becomes the final
with the same claim, so exactly one of a deadline and a transcript makes version 2, and a transcript
that comes after a deadline final claims version 3 with ``… WHERE final_reason = 'deadline'``, once.
The scan reads the index ``(final_published_at, draft_stored_at)``: rows not yet published are those
waiting for a final or for its delivery, a few among millions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import StaticPool

from cloud.audio_store import AudioRecords
from cloud.captions import CaptionVersion, Disagreement, DraftRow, FinalRow, Reconciliation, SegmentRow
from cloud.fleet_store import FleetRecords
from cloud.frame_store import FrameRecords, FrameRow
from cloud.job_store import JobRecords
from cloud.provenance import provenance
from cloud.rule import DRAFT_VERSION, FINAL_VERSION, UPGRADE_VERSION, Rule, deadline_final
from cloud.search import SearchRecords, segment_view
from cloud.tables import (
    SegmentKey,
    agent_status,
    by_key,
    by_keys,
    caption_versions,
    metadata,
    segment_attempts,
    segments,
)
from contracts import CloudTranscript, Draft, Final, Transcript, decode, encode

log = logging.getLogger(__name__)

__all__ = [
    "CaptionVersion",
    "Disagreement",
    "DraftRow",
    "FinalRow",
    "FrameRow",
    "Reconciliation",
    "SegmentKey",
    "SegmentRow",
    "Store",
    "metadata",
    "migrate",
]

MIGRATIONS_LOCK = 0x65646765636170  # PostgreSQL advisory lock held while the schema is upgraded


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest migration (creating it in an empty database).

    A store made before migrations existed (tables, no ``alembic_version``) is stamped with the
    first revision, the schema it has, and upgraded from there. Services starting together take
    turns: SQLite's ``BEGIN IMMEDIATE`` and a PostgreSQL advisory lock hold the others until the
    first has committed, and they then find nothing to do.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "cloud:migrations")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATIONS_LOCK})
        config.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "segments" in tables and "alembic_version" not in tables:
            log.warning("store made before migrations: stamping it with revision 0001, then upgrading")
            command.stamp(config, "0001")
        command.upgrade(config, "head")


def _switch_to_wal(cursor: Any, attempts: int = 200) -> None:
    """``PRAGMA journal_mode=WAL``, retried while it is refused as locked: two connections switching
    a new file at once both hold a shared lock and want an exclusive one, and SQLite refuses one of
    them at once, without its busy handler (a deadlock otherwise). Once the file is in WAL mode the
    pragma takes no lock."""
    import sqlite3

    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and write transactions that take the write lock at BEGIN.

    ``BEGIN IMMEDIATE`` lets concurrent writers wait for each other (busy timeout) instead of
    failing when a read transaction tries to upgrade to a write.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        # the timeout first: switching to WAL takes a lock that another process's migration may hold
        cursor.execute("PRAGMA busy_timeout=10000")
        if engine.url.database not in (None, "", ":memory:"):
            _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("edgecap_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Store(SearchRecords, FrameRecords, FleetRecords, AudioRecords, JobRecords):
    """Segments, their edge drafts and final captions, and every caption version; frames and their
    detections (:class:`~cloud.frame_store.FrameRecords`); the fleet's statuses
    (:class:`~cloud.fleet_store.FleetRecords`); segment audio (:class:`~cloud.audio_store.AudioRecords`);
    uploaded files as jobs (:class:`~cloud.job_store.JobRecords`)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported store {parsed.render_as_string(hide_password=True)}: sqlite or postgresql")
        if parsed.drivername == "postgresql":  # a plain postgresql:// URL: the driver of the cloud extra
            parsed = parsed.set(drivername="postgresql+psycopg")
        if self.dialect == "sqlite" and parsed.database in (None, "", ":memory:"):
            # one shared connection, or every pooled connection would see its own empty database
            self.engine = create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            self.engine = create_engine(parsed, pool_pre_ping=self.dialect != "sqlite")
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._reader = self.engine.execution_options(edgecap_readonly=True)
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        if create:
            migrate(self.engine)
        log.info("store at %s", parsed.render_as_string(hide_password=True))

    def close(self) -> None:
        self.engine.dispose()

    # --- writes -------------------------------------------------------------------------

    def upsert_draft(self, draft: Draft) -> bool:
        """Store an edge draft as version 1; False if this segment's draft was already known."""
        now = time.time()
        t = draft.draft
        values = {
            "draft_text": t.text.strip(),
            "draft_model_id": t.model_id,
            "draft_produced_at": t.produced_at,
            "draft_stored_at": now,
            "updated_at": now,
        }
        insert = self._insert(segments).values(**draft.header(), **values)
        upsert = insert.on_conflict_do_update(
            index_elements=[segments.c.agent_id, segments.c.segment_id],
            set_=values,
            where=segments.c.draft_produced_at.is_(None),
        )
        key = (draft.agent_id, draft.segment_id)
        with self.engine.begin() as conn:
            # RETURNING, not rowcount: psycopg reports no row count for INSERT … ON CONFLICT
            stored = conn.execute(upsert.returning(segments.c.segment_id)).first() is not None
            if stored:
                self._add_version(conn, key, DRAFT_VERSION, "edge", t.text.strip(), t.model_id, t.produced_at)
        return stored

    def record_final(self, transcript: CloudTranscript, rule: Rule) -> Final | None:
        """Store the final caption ``rule`` makes of a cloud transcript and the stored draft.

        Returns the :class:`~contracts.Final` to publish: version 2, or version 3 when the segment's
        final was made by the deadline; None if this segment already has a final the transcript
        cannot replace (a duplicate: nothing is changed).
        """
        now = time.time()
        key = (transcript.agent_id, transcript.segment_id)
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(segments)
                .values(**transcript.header(), updated_at=now)
                .on_conflict_do_nothing(index_elements=[segments.c.agent_id, segments.c.segment_id])
            )
            # Twice at most: on PostgreSQL another reconciler's deadline final may be committed between
            # the read and the claim; the claim then fails, and the second read sees it to upgrade.
            for _ in range(2):
                row = conn.execute(
                    select(
                        segments.c.draft_text,
                        segments.c.draft_model_id,
                        segments.c.final_version,
                        segments.c.final_reason,
                    ).where(by_key(segments, key))
                ).one()
                unclaimed: ColumnElement[bool]
                if row.final_version is None:
                    version, unclaimed = FINAL_VERSION, segments.c.final_version.is_(None)
                elif row.final_version == FINAL_VERSION and row.final_reason == "deadline":
                    version = UPGRADE_VERSION
                    unclaimed = and_(segments.c.final_version == FINAL_VERSION, segments.c.final_reason == "deadline")
                else:
                    return None
                final = rule(transcript, row.draft_text)
                if final.version != version:
                    final = final.model_copy(update={"version": version})
                if self._claim(conn, key, unclaimed, final, row.draft_text, row.draft_model_id, now):
                    return final
        return None

    def claim_overdue(self, cutoff: float, limit: int = 500) -> list[Final]:
        """Make the draft the final (reason ``deadline``) of up to ``limit`` segments whose draft was
        stored at or before ``cutoff`` and that have no final; the finals claimed, to publish.

        On PostgreSQL the rows are locked as read, skipping rows another reconciler's scan holds, so
        two scans share the work; on SQLite the write transaction serializes them. Either way the
        claim's ``WHERE final_version IS NULL`` makes each segment's final once.
        """
        now = time.time()
        finals: list[Final] = []
        query = (
            select(
                segments.c.agent_id,
                segments.c.segment_id,
                segments.c.seq,
                segments.c.started_at,
                segments.c.ended_at,
                segments.c.draft_text,
                segments.c.draft_model_id,
                segments.c.draft_produced_at,
            )
            .where(
                segments.c.final_published_at.is_(None),
                segments.c.draft_stored_at <= cutoff,
                segments.c.final_version.is_(None),
            )
            .order_by(segments.c.draft_stored_at)
            .limit(max(0, limit))
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as conn:
            for row in conn.execute(query).all():
                key = (row.agent_id, row.segment_id)
                try:
                    draft = Transcript(
                        text=row.draft_text, model_id=row.draft_model_id, produced_at=row.draft_produced_at
                    )
                    header = {"agent_id": row.agent_id, "segment_id": row.segment_id, "seq": row.seq,
                              "started_at": row.started_at, "ended_at": row.ended_at}  # fmt: skip
                    final = deadline_final(header, draft)
                except ValidationError as exc:  # stored before the contract's bounds: left for its transcript
                    log.warning("cannot make a deadline final of %s from %s: %s", row.segment_id, row.agent_id, exc)
                    continue
                unclaimed = segments.c.final_version.is_(None)
                if self._claim(conn, key, unclaimed, final, row.draft_text, row.draft_model_id, now):
                    finals.append(final)
        return finals

    def unsent_deadline_finals(self, stored_before: float, limit: int = 500) -> list[Final]:
        """Deadline finals stored at or before ``stored_before`` and never marked published (their
        reconciler died or Kafka failed before delivery): no record will bring them again, so the
        deadline scan sends them again (a duplicate, at worst, which the devices ignore)."""
        query = (
            select(segments.c.final_message)
            .where(
                segments.c.final_published_at.is_(None),
                segments.c.final_reason == "deadline",
                segments.c.final_stored_at <= stored_before,
                segments.c.final_message.is_not(None),
            )
            .order_by(segments.c.final_stored_at)
            .limit(max(0, limit))
        )
        with self._reader.connect() as conn:
            messages = conn.execute(query).scalars().all()
        return [decode(m.encode("utf-8"), Final) for m in messages]

    def _claim(
        self,
        conn: Connection,
        key: SegmentKey,
        unclaimed: Any,
        final: Final,
        draft_text: str | None,
        draft_model_id: str | None,
        now: float,
    ) -> bool:
        """Store ``final`` as the segment's final if the row still matches ``unclaimed``, with its
        provenance and a new caption version; False if another claim came first."""
        model_id: str = draft_model_id if final.source == "edge" and draft_model_id else final.transcript.model_id
        produced_at = final.transcript.produced_at
        made = provenance(final, draft_text, draft_model_id)
        values = {
            "final_text": final.text,
            "final_model_id": model_id,
            "final_produced_at": produced_at,
            "final_source": final.source,
            "final_version": final.version,
            "final_reason": final.reason,
            "final_stored_at": now,
            "final_message": encode(final).decode("utf-8"),
            "final_published_at": None,
            "alignment": None if made.alignment is None else _json(made.alignment),
            "final_words": _json(made.words),
            "draft_edits": made.edits,
            "final_word_count": made.final_words,
            "disagreement": made.disagreement,
            "updated_at": now,
        }
        claimed = conn.execute(update(segments).where(by_key(segments, key), unclaimed).values(**values)).rowcount
        if claimed != 1:
            return False
        self._add_version(conn, key, final.version, final.source, final.text, model_id, produced_at)
        return True

    def unpublished_final(self, key: SegmentKey) -> Final | None:
        """The stored final of a segment if it was never marked published (a crash in between)."""
        with self._reader.connect() as conn:
            message = conn.execute(
                select(segments.c.final_message).where(
                    by_key(segments, key),
                    segments.c.final_message.is_not(None),
                    segments.c.final_published_at.is_(None),
                )
            ).scalar_one_or_none()
        return decode(message.encode("utf-8"), Final) if message else None

    def mark_published(self, finals: Iterable[Final]) -> None:
        """Record that these finals were delivered to Kafka (each by its version: a final that a
        newer version replaced meanwhile leaves the newer one unpublished)."""
        keys = [(f.agent_id, f.segment_id, f.version) for f in finals]
        if not keys:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(segments)
                .where(
                    tuple_(segments.c.agent_id, segments.c.segment_id, segments.c.final_version).in_(keys),
                    segments.c.final_published_at.is_(None),
                )
                .values(final_published_at=time.time())
            )

    def collides(self, key: SegmentKey) -> bool:
        """Whether another device has stored a segment with this ``segment_id`` (each keeps its own
        row; the reconciler counts it, since a device that reuses ids is misconfigured or hostile)."""
        agent_id, segment_id = key
        with self._reader.connect() as conn:
            other = conn.execute(
                select(segments.c.agent_id)
                .where(segments.c.segment_id == segment_id, segments.c.agent_id != agent_id)
                .limit(1)
            ).first()
        return other is not None

    def attempts(self, keys: list[SegmentKey]) -> dict[SegmentKey, int]:
        """The counted attempts of those of these segments that have any."""
        if not keys:
            return {}
        query = select(segment_attempts.c.agent_id, segment_attempts.c.segment_id, segment_attempts.c.attempts).where(
            by_keys(segment_attempts, list(dict.fromkeys(keys)))
        )
        with self._reader.connect() as conn:
            return {(r.agent_id, r.segment_id): int(r.attempts) for r in conn.execute(query)}

    def take_attempts(self, keys: list[SegmentKey]) -> dict[SegmentKey, int]:
        """Count one more attempt at each segment, durably, before a worker takes them in hand; how
        many attempts each has had, this one included. Counts survive the worker (a crash mid-batch
        leaves them raised); :meth:`forget_attempts` drops them once a segment is done."""
        now = time.time()
        counts: dict[SegmentKey, int] = {}
        with self.engine.begin() as conn:
            for agent_id, segment_id in dict.fromkeys(keys):
                insert = self._insert(segment_attempts).values(
                    agent_id=agent_id, segment_id=segment_id, attempts=1, last_attempt_at=now
                )
                upsert = insert.on_conflict_do_update(
                    index_elements=[segment_attempts.c.agent_id, segment_attempts.c.segment_id],
                    set_={"attempts": segment_attempts.c.attempts + 1, "last_attempt_at": now},
                ).returning(segment_attempts.c.attempts)
                counts[(agent_id, segment_id)] = int(conn.execute(upsert).scalar_one())
        return counts

    def forget_attempts(self, keys: list[SegmentKey]) -> None:
        """Drop the attempt counts of segments that are done (transcribed or dead-lettered)."""
        if not keys:
            return
        with self.engine.begin() as conn:
            conn.execute(delete(segment_attempts).where(by_keys(segment_attempts, list(dict.fromkeys(keys)))))

    def _add_version(
        self,
        conn: Connection,
        key: SegmentKey,
        version: int,
        source: str,
        text: str,
        model_id: str,
        produced_at: float,
    ) -> None:
        agent_id, segment_id = key
        conn.execute(
            self._insert(caption_versions)
            .values(
                agent_id=agent_id,
                segment_id=segment_id,
                version=version,
                source=source,
                text=text,
                model_id=model_id,
                produced_at=produced_at,
            )
            .on_conflict_do_nothing()
        )

    # --- reads --------------------------------------------------------------------------

    def list_segments(
        self, limit: int = 200, agent_id: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[SegmentRow]:
        """The newest segments first (by capture time, then sequence number), captured in [since, until)."""
        return self.search_segments(agent_id=agent_id, since=since, until=until, limit=limit).rows

    def changed_since(
        self, since: float, agent_id: str | None = None, limit: int = 500, site: str | None = None
    ) -> list[tuple[float, SegmentRow]]:
        """Segments written after ``since`` (their ``updated_at``, the writer's clock), oldest change
        first, each with its change time: the dashboard's live feed reads this again and again."""
        query = self._segments_query().where(segments.c.updated_at > since).order_by(segments.c.updated_at).limit(limit)
        if agent_id is not None:
            query = query.where(segments.c.agent_id == agent_id)
        if site is not None:
            query = query.where(agent_status.c.site == site)
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        return [(float(row.updated_at), segment_view(row._mapping)) for row in rows]

    def get(self, key: SegmentKey) -> SegmentRow | None:
        with self._reader.connect() as conn:
            row = conn.execute(self._segments_query().where(by_key(segments, key))).first()
        return segment_view(row._mapping) if row is not None else None

    def versions(self, key: SegmentKey) -> list[CaptionVersion]:
        """Every stored caption version of a segment, oldest version first."""
        query = select(caption_versions).where(by_key(caption_versions, key)).order_by(caption_versions.c.version)
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        return [
            CaptionVersion(
                agent_id=r.agent_id,
                segment_id=r.segment_id,
                version=r.version,
                source=r.source,
                text=r.text,
                model_id=r.model_id,
                produced_at=r.produced_at,
            )
            for r in rows
        ]

    def reconciliation(self, key: SegmentKey) -> Reconciliation | None:
        """How a segment's final was made; None if it has no final."""
        query = select(
            segments.c.final_reason,
            segments.c.alignment,
            segments.c.final_words,
            segments.c.draft_edits,
            segments.c.final_word_count,
            segments.c.disagreement,
        ).where(by_key(segments, key), segments.c.final_version.is_not(None))
        with self._reader.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Reconciliation(
            reason=row.final_reason,
            alignment=None if row.alignment is None else json.loads(row.alignment),
            words=None if row.final_words is None else json.loads(row.final_words),
            edits=row.draft_edits,
            final_words=row.final_word_count,
            disagreement=row.disagreement,
        )

    def disagreement(self, agent_id: str | None = None, since: float | None = None) -> list[Disagreement]:
        """Draft-to-final disagreement per device and edge model, over the finals weighed against a
        draft (stored at or after ``since``, if given): a drifting device or a bad model version
        shows as a rising ``wer`` or more drafts kept. Ordered by device, then model."""
        weighed: list[ColumnElement[bool]] = [segments.c.disagreement.is_not(None)]
        if agent_id is not None:
            weighed.append(segments.c.agent_id == agent_id)
        if since is not None:
            weighed.append(segments.c.final_stored_at >= since)
        group = (segments.c.agent_id, segments.c.draft_model_id)
        totals = (
            select(
                *group,
                func.count().label("n"),
                func.sum(segments.c.draft_edits).label("edits"),
                func.sum(segments.c.final_word_count).label("words"),
                func.avg(segments.c.disagreement).label("mean"),
                func.sum(case((segments.c.final_source == "edge", 1), else_=0)).label("kept"),
            )
            .where(*weighed)
            .group_by(*group)
            .order_by(*group)
        )
        by_reason = select(*group, segments.c.final_reason, func.count().label("n")).where(*weighed).group_by(
            *group, segments.c.final_reason
        )
        with self._reader.connect() as conn:
            rows = conn.execute(totals).all()
            reasons: dict[tuple[str, str | None], dict[str, int]] = {}
            for r in conn.execute(by_reason):
                reasons.setdefault((r.agent_id, r.draft_model_id), {})[r.final_reason or "unknown"] = int(r.n)
        return [
            Disagreement(
                agent_id=r.agent_id,
                edge_model_id=r.draft_model_id,
                segments=int(r.n),
                edits=int(r.edits or 0),
                final_words=int(r.words or 0),
                wer=int(r.edits or 0) / int(r.words) if r.words else None,
                mean_disagreement=None if r.mean is None else float(r.mean),
                drafts_kept=int(r.kept or 0),
                reasons=reasons.get((r.agent_id, r.draft_model_id), {}),
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """How many segments, drafts and finals are stored."""
        query = select(
            func.count(),
            func.count(segments.c.draft_produced_at),
            func.count(segments.c.final_version),
        ).select_from(segments)
        with self._reader.connect() as conn:
            total, drafts, finals = conn.execute(query).one()
        return {"segments": int(total), "drafts": int(drafts), "finals": int(finals)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
