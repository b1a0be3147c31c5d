"""Finding segments: by words of their captions, site, device, capture time and state, a page at a time.

One query serves the live page's first screen, the search view, the export and the API
(``GET /api/segments``). Words are matched as whole words in the final and the draft: on PostgreSQL
with ``websearch_to_tsquery`` (quoted phrases, ``or``, ``-word``) on the ``simple`` configuration
(no stemming, any language) and the GIN index of migration 0010; on SQLite (small deployments) each
word must occur in the text, without an index. Pages go newest first and continue from an opaque
cursor (the last row's sort key), so a page never repeats or skips a row while new ones arrive.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, Select, and_, func, literal_column, or_, select, tuple_

from cloud.captions import DraftRow, FinalRow, SegmentRow
from cloud.tables import SEARCH_DOCUMENT, SegmentKey, agent_status, by_key, segments
from contracts import DecodeError, Final, Word, decode

log = logging.getLogger(__name__)

State = Literal["draft", "final", "cloud", "edge"]
"""``draft``: no final yet; ``final``: has one; ``cloud``/``edge``: its final's text is the cloud's / the draft."""



@dataclass(frozen=True)
class Step:
    """One step of a segment's way from the microphone to the final caption."""

    name: str
    at: float | None
    means: str


@dataclass(frozen=True)
class Journey:
    """A segment's steps in order, and its final's words with times from the segment's start (empty:
    the final is the draft, or the engine gave no word times)."""

    steps: list[Step]
    words: list[Word]


class BadCursor(ValueError):
    """A cursor this code did not make."""


@dataclass(frozen=True)
class Page:
    """One page of segments, newest first, and the cursor of the next (None: this was the last)."""

    rows: list[SegmentRow]
    next_cursor: str | None


def encode_cursor(row: SegmentRow) -> str:
    key = [row["started_at"], row["seq"], row["agent_id"], row["segment_id"]]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int, str, str]:
    try:
        started_at, seq, agent_id, segment_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(started_at), int(seq), str(agent_id), str(segment_id)
    except (ValueError, TypeError) as exc:
        raise BadCursor("not a cursor of this API: start again without one") from exc


def words_of(q: str) -> list[str]:
    """The words SQLite's search looks for (PostgreSQL parses the query itself)."""
    return [w for w in re.findall(r"[\w']+", q.lower()) if w]


class SearchRecords:
    """The search half of :class:`cloud.store.Store` (a mixin: it uses the store's reader)."""

    _reader: Engine
    dialect: str

    def search_segments(
        self,
        *,
        q: str | None = None,
        site: str | None = None,
        agent_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        state: State | None = None,
        cursor: str | None = None,
        limit: int = 200,
    ) -> Page:
        """Segments captured in [since, until) that match every filter given, newest first."""
        query = self._segments_query()
        if q and q.strip():
            query = query.where(self._matches(q))
        if site is not None:
            query = query.where(agent_status.c.site == site)
        if agent_id is not None:
            query = query.where(segments.c.agent_id == agent_id)
        if since is not None:
            query = query.where(segments.c.started_at >= since)
        if until is not None:
            query = query.where(segments.c.started_at < until)
        if state == "draft":
            query = query.where(segments.c.final_version.is_(None))
        elif state == "final":
            query = query.where(segments.c.final_version.is_not(None))
        elif state in ("cloud", "edge"):
            query = query.where(segments.c.final_source == state)
        if cursor:
            query = query.where(tuple_(*_ORDER) < tuple_(*decode_cursor(cursor)))
        with self._reader.connect() as conn:
            found = conn.execute(query.order_by(*(c.desc() for c in _ORDER)).limit(max(1, limit) + 1)).all()
        rows = [segment_view(r._mapping) for r in found[:limit]]
        more = len(found) > limit
        return Page(rows, encode_cursor(rows[-1]) if more and rows else None)

    def journey(self, key: SegmentKey) -> Journey | None:
        """When each step of a segment happened, and its final's words with their times (None: unknown)."""
        columns = (segments.c.started_at, segments.c.ended_at, segments.c.draft_produced_at, segments.c.draft_stored_at,
                   segments.c.final_produced_at, segments.c.final_stored_at, segments.c.final_published_at,
                   segments.c.final_message)  # fmt: skip
        with self._reader.connect() as conn:
            row = conn.execute(select(*columns).where(by_key(segments, key))).first()
        if row is None:
            return None
        steps = [
            Step("captured", row.started_at, "the first sample, on the device's clock"),
            Step("spoken", row.ended_at, "the last sample: the VAD closed the segment"),
            Step("draft", row.draft_produced_at, "the device's own caption was ready (device clock)"),
            Step("in the cloud", row.draft_stored_at, "the reconciler stored the draft from Kafka (cloud clock)"),
            Step("transcribed", row.final_produced_at, "the text of the final was ready"),
            Step("final", row.final_stored_at, "the rule chose the final and stored it"),
            Step("sent back", row.final_published_at, "the final went to edgecap.finals, toward the device"),
        ]
        words: list[Word] = []
        if row.final_message:
            try:
                final = decode(row.final_message.encode("utf-8"), Final)
                if final.source == "cloud":
                    words = [w for span in final.transcript.segments for w in span.words]
            except DecodeError as exc:  # stored by this code; logged rather than failing the page
                log.warning("segment %s/%s: its stored final does not decode: %s", *key, exc)
        return Journey(steps=[s for s in steps if s.at is not None], words=words)

    def _segments_query(self) -> Select[Any]:
        joined = segments.outerjoin(agent_status, agent_status.c.agent_id == segments.c.agent_id)
        return select(segments, agent_status.c.site).select_from(joined)

    def _matches(self, q: str) -> Any:
        if self.dialect == "postgresql":
            return literal_column(SEARCH_DOCUMENT).op("@@")(func.websearch_to_tsquery("simple", q))
        text = func.lower(func.coalesce(segments.c.final_text, "") + " " + func.coalesce(segments.c.draft_text, ""))
        words = words_of(q)
        if not words:
            return or_(False)
        return and_(*(text.contains(w, autoescape=True) for w in words))


_ORDER = (segments.c.started_at, segments.c.seq, segments.c.agent_id, segments.c.segment_id)


def segment_view(row: Any) -> SegmentRow:
    """A stored segment row (with its device's site, where the query joined it) as the API shows it."""
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
            reason=row["final_reason"],
        )
    return SegmentRow(
        segment_id=row["segment_id"],
        agent_id=row["agent_id"],
        site=row.get("site"),
        seq=row["seq"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        draft=draft,
        final=final,
    )
