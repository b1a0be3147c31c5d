"""The caption records the store returns and the dashboard API serves (JSON-ready dicts)."""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict  # pydantic (FastAPI responses) needs it before Python 3.12


class DraftRow(TypedDict):
    """The edge draft of a segment."""

    text: str
    model_id: str
    produced_at: float


class FinalRow(TypedDict):
    """The reconciled final caption of a segment."""

    text: str
    model_id: str
    source: Literal["cloud", "edge"]
    version: int
    produced_at: float
    stored_at: float


class SegmentRow(TypedDict):
    """One segment with its draft and final caption (either may still be missing)."""

    segment_id: str
    agent_id: str
    seq: int
    started_at: float
    ended_at: float
    draft: DraftRow | None
    final: FinalRow | None


class CaptionVersion(TypedDict):
    """One version of a segment's caption: 1 is the edge draft, 2 the final."""

    agent_id: str
    segment_id: str
    version: int
    source: Literal["cloud", "edge"]
    text: str
    model_id: str
    produced_at: float
