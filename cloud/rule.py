"""The reconciliation rule: which text becomes a segment's final caption, and why.

A segment's caption has versions. The edge draft is version 1 (source ``edge``). The final is
version 2: the cloud text (source ``cloud``, reason ``cloud``), unless the cloud result fails one of
Whisper's own quality checks against a known draft, in which case the draft stands (source
``edge``) with the check as its reason:

- ``cloud_empty``: the cloud heard no words where the draft has some;
- ``compression_ratio``: the cloud text's bytes over their zlib size above 2.4 (Whisper's sign of a
  repetition loop; the engine's figure, else computed here from the text as Whisper does);
- ``low_logprob``: the mean token log-probability below -1.0 (Whisper's sign of an unsure decode;
  with Whisper's no-speech rule, which also needs it below -1.0, this covers silence taken for
  speech);
- ``word_count``: the cloud has more than twice or fewer than half the draft's words *and* the
  counts differ by at least 4. Whisper's failures are whole spans hallucinated or dropped, which
  move the count far; a real correction of the draft changes a few words. The ratio alone would flip
  short utterances ("yes" against "yes thank you"), the difference alone long ones, so both must hold.

Thresholds are settings (:class:`cloud.settings.QualityChecks`), with Whisper's defaults. With no
draft known the cloud text stands unchecked (reason ``no_draft``): there is nothing better. A draft
that arrives after its final is kept as version 1 and changes nothing.

When no cloud transcript came ``final_deadline_s`` after the draft was stored, the draft becomes the
final (version 2, source ``edge``, reason ``deadline``: :func:`deadline_final`), and the transcript
that comes later is weighed by the same rule as version 3, once (:data:`UPGRADE_VERSION`).

Not built: a word-level override (a draft word where the cloud word is improbable and the draft
word confident). It ships only once measured to help on every set of the speech corpus.

The reconciler decides with :func:`reconcile`; the store applies it inside the transaction that
claims the segment's final (:meth:`cloud.store.Store.record_final`), so the draft it weighs is the
one stored at that moment, and sets the version it claims.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from cloud.alignment import words
from cloud.settings import QualityChecks
from contracts import CloudTranscript, Final, Transcript
from contracts.messages import FinalReason

DRAFT_VERSION = 1
FINAL_VERSION = 2
UPGRADE_VERSION = 3
"""A cloud transcript that comes after a deadline final replaces it as this version."""

DEFAULT_CHECKS = QualityChecks()

Rule = Callable[[CloudTranscript, str | None], Final]
"""A rule: the final caption from a cloud transcript and the stored draft text (None: no draft yet)."""


def compression_ratio(text: str) -> float:
    """Bytes of a text over the bytes of its zlib compression, as Whisper computes it."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def check(transcript: Transcript, draft_text: str | None, checks: QualityChecks = DEFAULT_CHECKS) -> FinalReason:
    """``cloud`` or ``no_draft`` when the cloud text stands; else the first check it fails."""
    if draft_text is None:
        return "no_draft"
    draft_words, cloud_words = len(words(draft_text)), len(words(transcript.text))
    if cloud_words == 0 and draft_words > 0:
        return "cloud_empty"
    quality = transcript.quality
    ratio = quality.compression_ratio if quality is not None else compression_ratio(transcript.text.strip())
    if ratio > checks.max_compression_ratio:
        return "compression_ratio"
    if quality is not None and quality.avg_logprob < checks.min_avg_logprob:
        return "low_logprob"
    if draft_words > 0 and abs(cloud_words - draft_words) >= checks.min_word_difference:
        if cloud_words > draft_words * checks.max_word_ratio or cloud_words * checks.max_word_ratio < draft_words:
            return "word_count"
    return "cloud"


def reconcile(transcript: CloudTranscript, draft_text: str | None, checks: QualityChecks = DEFAULT_CHECKS) -> Final:
    """The final caption of a segment from the cloud transcript and the edge draft text, if known."""
    reason = check(transcript.transcript, draft_text, checks)
    edge_wins = reason not in ("cloud", "no_draft")
    return Final(
        **transcript.header(),
        text=(draft_text or "").strip() if edge_wins else transcript.transcript.text.strip(),
        source="edge" if edge_wins else "cloud",
        version=FINAL_VERSION,
        transcript=transcript.transcript,
        draft_text=draft_text,
        reason=reason,
    )


def deadline_final(header: dict[str, Any], draft: Transcript) -> Final:
    """The final of a segment whose cloud transcript is late: its draft (``header``: the segment's
    :meth:`~contracts.SegmentHeader.header` fields)."""
    text = draft.text.strip()
    return Final(
        **header,
        text=text,
        source="edge",
        version=FINAL_VERSION,
        transcript=draft,
        draft_text=text,
        reason="deadline",
    )
