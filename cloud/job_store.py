"""Uploaded files as jobs in the store: which segments each file was cut into, and where each lies in it.

A job (``POST /api/jobs``, :mod:`cloud.dashboard.jobs`) is written once Kafka has confirmed all its
segments: one ``jobs`` row and one ``job_segments`` row per segment (its position, its offset and
duration in the file). The segments themselves go the way of any device's segment (transcriber,
reconciler, ``segments`` table); a job's progress and transcript are read by joining its
``job_segments`` to their ``segments`` rows, so nothing here is updated as finals come in.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select

from cloud.tables import job_segments, jobs, segments
from contracts import DecodeError, Final, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One uploaded file: who sent it as which agent, what it was, how long, how many segments."""

    job_id: str
    agent_id: str
    name: str
    kind: str
    format: str
    bytes: int
    created_by: str
    created_at: float
    origin_at: float  # the capture time given to the file's first sample: a segment's offset is started_at - this
    duration_s: float
    segment_count: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobPiece:
    """One segment of a job: its place in the file."""

    position: int
    agent_id: str
    segment_id: str
    offset_s: float
    duration_s: float


@dataclass(frozen=True)
class JobPieceState:
    """A job's segment with its final, if stored yet."""

    piece: JobPiece
    final: Final | None


class JobRecords:
    """The jobs half of :class:`cloud.store.Store` (a mixin: it uses the store's engines)."""

    engine: Engine
    _reader: Engine

    def add_job(self, job: Job, pieces: list[JobPiece]) -> None:
        """Keep ``job`` and its segments (one transaction)."""
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(**asdict(job)))
            if pieces:
                conn.execute(insert(job_segments), [asdict(p) | {"job_id": job.job_id} for p in pieces])

    def jobs(self, limit: int = 50, agent_id: str | None = None) -> list[tuple[Job, int]]:
        """The newest jobs first, each with how many of its segments have a final."""
        finals = (
            select(job_segments.c.job_id, func.count(segments.c.final_version).label("finals"))
            .select_from(job_segments.outerjoin(segments, _same_segment()))
            .group_by(job_segments.c.job_id)
            .subquery()
        )
        query = (
            select(jobs, func.coalesce(finals.c.finals, 0).label("finals"))
            .select_from(jobs.outerjoin(finals, finals.c.job_id == jobs.c.job_id))
            .order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
            .limit(max(0, limit))
        )
        if agent_id is not None:
            query = query.where(jobs.c.agent_id == agent_id)
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        return [(_job(r), int(r.finals)) for r in rows]

    def job(self, job_id: str) -> tuple[Job, list[JobPieceState]] | None:
        """One job and its segments in the file's order, each with its final (None until stored)."""
        query = (
            select(job_segments, segments.c.final_message)
            .select_from(job_segments.outerjoin(segments, _same_segment()))
            .where(job_segments.c.job_id == job_id)
            .order_by(job_segments.c.position)
        )
        with self._reader.connect() as conn:
            found = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).first()
            if found is None:
                return None
            rows = conn.execute(query).all()
        states = []
        for r in rows:
            piece = JobPiece(r.position, r.agent_id, r.segment_id, r.offset_s, r.duration_s)
            states.append(JobPieceState(piece, _final(r.final_message, r.segment_id)))
        return _job(found), states


def _same_segment() -> Any:
    return and_(segments.c.agent_id == job_segments.c.agent_id, segments.c.segment_id == job_segments.c.segment_id)


def _job(row: Any) -> Job:
    return Job(**{name: getattr(row, name) for name in Job.__dataclass_fields__})


def _final(message: str | None, segment_id: str) -> Final | None:
    """The stored Final of a segment; None if it has none (or one this code cannot read, logged)."""
    if message is None:
        return None
    try:
        return decode(message.encode("utf-8"), Final)
    except DecodeError as exc:
        log.warning("the stored final of segment %s does not decode: %s", segment_id, exc)
        return None
