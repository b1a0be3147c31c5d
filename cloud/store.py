"""The caption store: one row per segment (edge draft and final caption) plus every caption version.

SQLite by default (a file in WAL mode), PostgreSQL by URL. Every row is keyed by device and segment,
(``agent_id``, ``segment_id``): two devices that choose the same ``segment_id`` never share a row
(:meth:`Store.collides` tells the reconciler, which counts it). Exactly one final per segment is
guaranteed by the database, not by reading first: the final is claimed with
``UPDATE … WHERE final_version IS NULL`` and versions are inserted with ``ON CONFLICT DO NOTHING``,
so two reconcilers racing on the same transcript store one final and the loser sees a duplicate.
Drafts and transcripts may arrive in either order; whichever comes first creates the row.

The schema is made and upgraded by alembic (:mod:`cloud.migrations`, :func:`migrate`), at every
start, under a lock, so an existing SQLite or PostgreSQL store upgrades in place; ``metadata`` below
is the schema the newest migration produces.

Every value that decodes fits its column (the limits of :mod:`contracts.bounds`): integers are
64-bit (``BIGINT`` on PostgreSQL; SQLite's ``INTEGER`` is 64-bit whatever the declared type, so a
store created before these types holds the same values), ids and model names are at least as long
as the contract allows, texts are ``TEXT``, times are double precision.

The store persists, the reconciler decides: which text becomes the final is the rule the reconciler
passes to :meth:`Store.record_final` (:mod:`cloud.rule`), applied to the draft stored at the moment
the final is claimed, in the same transaction.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
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

from cloud.captions import CaptionVersion, DraftRow, FinalRow, SegmentRow
from cloud.rule import DRAFT_VERSION, Rule
from contracts import CloudTranscript, Draft, Final, bounds, decode, encode

log = logging.getLogger(__name__)

__all__ = ["CaptionVersion", "DraftRow", "FinalRow", "SegmentKey", "SegmentRow", "Store", "migrate"]

metadata = MetaData()

AGENT_ID_CHARS = 64  # contracts.ids.AGENT_ID_PATTERN
SEGMENT_ID_CHARS = 128  # contracts.ids.SEGMENT_ID_PATTERN
# the key of every row: which device, which of its segments
SegmentKey = tuple[str, str]  # (agent_id, segment_id)
MIGRATIONS_LOCK = 0x65646765636170  # PostgreSQL advisory lock held while the schema is upgraded

segments = Table(
    "segments",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Column("draft_text", Text),
    Column("draft_model_id", String(bounds.MAX_NAME_CHARS)),
    Column("draft_produced_at", Float),
    Column("final_text", Text),
    Column("final_model_id", String(bounds.MAX_NAME_CHARS)),
    Column("final_produced_at", Float),
    Column("final_source", String(8)),
    Column("final_version", BigInteger),
    Column("final_stored_at", Float),
    Column("final_message", Text),  # the Final as sent on the wire (re-sent if never published)
    Column("final_published_at", Float),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segments"),
    Index("ix_segments_started_at", "started_at"),
    Index("ix_segments_agent_seq", "agent_id", "seq"),
    Index("ix_segments_segment_id", "segment_id"),  # collisions across devices
)

caption_versions = Table(
    "caption_versions",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("source", String(8), nullable=False),
    Column("text", Text, nullable=False),
    Column("model_id", String(bounds.MAX_NAME_CHARS), nullable=False),
    Column("produced_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", "version", name="pk_caption_versions"),
)

segment_attempts = Table(
    "segment_attempts",
    metadata,
    Column("agent_id", String(AGENT_ID_CHARS), nullable=False),
    Column("segment_id", String(SEGMENT_ID_CHARS), nullable=False),
    Column("attempts", BigInteger, nullable=False),
    Column("last_attempt_at", Float, nullable=False),
    PrimaryKeyConstraint("agent_id", "segment_id", name="pk_segment_attempts"),
)


def _key(table: Table, key: SegmentKey) -> Any:
    return and_(table.c.agent_id == key[0], table.c.segment_id == key[1])


def _keys(table: Table, keys: list[SegmentKey]) -> Any:
    return tuple_(table.c.agent_id, table.c.segment_id).in_(keys)


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


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and write transactions that take the write lock at BEGIN.

    ``BEGIN IMMEDIATE`` lets concurrent writers wait for each other (busy timeout) instead of
    failing when a read transaction tries to upgrade to a write.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("edgecap_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Store:
    """Segments, their edge drafts and final captions, and every caption version."""

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

        Returns the :class:`~contracts.Final` to publish, or None if this segment already has a
        final (a duplicate: nothing is changed).
        """
        now = time.time()
        key = (transcript.agent_id, transcript.segment_id)
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(segments)
                .values(**transcript.header(), updated_at=now)
                .on_conflict_do_nothing(index_elements=[segments.c.agent_id, segments.c.segment_id])
            )
            row = conn.execute(
                select(segments.c.draft_text, segments.c.draft_model_id).where(_key(segments, key))
            ).one()
            final = rule(transcript, row.draft_text)
            model_id: str = row.draft_model_id if final.source == "edge" else transcript.transcript.model_id
            produced_at = transcript.transcript.produced_at
            values = {
                "final_text": final.text,
                "final_model_id": model_id,
                "final_produced_at": produced_at,
                "final_source": final.source,
                "final_version": final.version,
                "final_stored_at": now,
                "final_message": encode(final).decode("utf-8"),
                "updated_at": now,
            }
            claimed = conn.execute(
                update(segments).where(_key(segments, key), segments.c.final_version.is_(None)).values(**values)
            ).rowcount
            if claimed != 1:
                return None
            self._add_version(conn, key, final.version, final.source, final.text, model_id, produced_at)
        return final

    def unpublished_final(self, key: SegmentKey) -> Final | None:
        """The stored final of a segment if it was never marked published (a crash in between)."""
        with self._reader.connect() as conn:
            message = conn.execute(
                select(segments.c.final_message).where(
                    _key(segments, key),
                    segments.c.final_message.is_not(None),
                    segments.c.final_published_at.is_(None),
                )
            ).scalar_one_or_none()
        return decode(message.encode("utf-8"), Final) if message else None

    def mark_published(self, keys: list[SegmentKey]) -> None:
        """Record that these segments' finals were delivered to Kafka."""
        if not keys:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(segments)
                .where(_keys(segments, keys), segments.c.final_published_at.is_(None))
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
            _keys(segment_attempts, list(dict.fromkeys(keys)))
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
            conn.execute(delete(segment_attempts).where(_keys(segment_attempts, list(dict.fromkeys(keys)))))

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

    def list_segments(self, limit: int = 200, agent_id: str | None = None) -> list[SegmentRow]:
        """The newest segments first (by capture time, then sequence number)."""
        query = select(segments).order_by(
            segments.c.started_at.desc(), segments.c.seq.desc(), segments.c.agent_id, segments.c.segment_id.desc()
        )
        if agent_id is not None:
            query = query.where(segments.c.agent_id == agent_id)
        with self._reader.connect() as conn:
            rows = conn.execute(query.limit(max(0, limit))).all()
        return [_view(row._mapping) for row in rows]

    def get(self, key: SegmentKey) -> SegmentRow | None:
        with self._reader.connect() as conn:
            row = conn.execute(select(segments).where(_key(segments, key))).first()
        return _view(row._mapping) if row is not None else None

    def versions(self, key: SegmentKey) -> list[CaptionVersion]:
        """Every stored caption version of a segment, oldest version first."""
        query = select(caption_versions).where(_key(caption_versions, key)).order_by(caption_versions.c.version)
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


def _view(row: Any) -> SegmentRow:
    draft: DraftRow | None = None
    if row["draft_produced_at"] is not None:
        draft = DraftRow(text=row["draft_text"], model_id=row["draft_model_id"], produced_at=row["draft_produced_at"])
    final: FinalRow | None = None
    if row["final_version"] is not None:
        final = FinalRow(
            text=row["final_text"],
            model_id=row["final_model_id"],
            source=row["final_source"],
            version=row["final_version"],
            produced_at=row["final_produced_at"],
            stored_at=row["final_stored_at"],
        )
    return SegmentRow(
        segment_id=row["segment_id"],
        agent_id=row["agent_id"],
        seq=row["seq"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        draft=draft,
        final=final,
    )
