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
    reason: str | None  # contracts.messages.FinalReason; None for finals stored before reasons


class SegmentRow(TypedDict):
    """One segment with its draft and final caption (either may still be missing)."""

    segment_id: str
    agent_id: str
    site: str | None  # the device's site, from its latest status (None: no status seen)
    seq: int
    started_at: float
    ended_at: float
    draft: DraftRow | None
    final: FinalRow | None


class CaptionVersion(TypedDict):
    """One version of a segment's caption: 1 is the edge draft, 2 the final, 3 a cloud transcript's
    upgrade of a final the deadline made of the draft."""

    agent_id: str
    segment_id: str
    version: int
    source: Literal["cloud", "edge"]
    text: str
    model_id: str
    produced_at: float


class AlignedPair(TypedDict):
    """A draft word and a cloud word aligned (None on the side that has none)."""

    draft: str | None
    cloud: str | None
    op: Literal["equal", "substitute", "insert", "delete"]


class WordSource(TypedDict):
    """One word of a final and the model it came from, with that model's probability if known."""

    word: str
    model_id: str
    probability: float | None


class Reconciliation(TypedDict):
    """How a segment's final was made (:mod:`cloud.provenance`)."""

    reason: str | None
    alignment: list[AlignedPair] | None
    words: list[WordSource] | None
    edits: int | None
    final_words: int | None
    disagreement: float | None


class Disagreement(TypedDict):
    """Draft-to-final disagreement of one device with one edge model (finals weighed against a draft;
    deadline finals are not). ``wer`` pools the draft's word errors over the finals' words."""

    agent_id: str
    edge_model_id: str | None
    segments: int
    edits: int
    final_words: int
    wer: float | None
    mean_disagreement: float | None
    drafts_kept: int
    reasons: dict[str, int]
