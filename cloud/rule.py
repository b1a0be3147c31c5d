"""The reconciliation rule: which text becomes a segment's final caption.

A segment's caption has two versions. The edge draft is version 1 (source ``edge``). The final is
version 2: the cloud text (source ``cloud``), unless the cloud text is empty and a draft with text
is known, in which case the draft text stands as the final (source ``edge``). A draft that arrives
after its final is still kept as version 1 and does not change the final.

The reconciler decides with :func:`reconcile`; the store applies it inside the transaction that
claims the segment's one final (:meth:`cloud.store.Store.record_final`), so the draft it weighs is
the one stored at that moment.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts import CloudTranscript, Final

DRAFT_VERSION = 1
FINAL_VERSION = 2

Rule = Callable[[CloudTranscript, str | None], Final]
"""A rule: the final caption from a cloud transcript and the stored draft text (None: no draft yet)."""


def reconcile(transcript: CloudTranscript, draft_text: str | None) -> Final:
    """The final caption of a segment from the cloud transcript and the edge draft text, if known."""
    cloud_text = transcript.transcript.text.strip()
    edge_text = (draft_text or "").strip()
    edge_wins = not cloud_text and bool(edge_text)
    return Final(
        **transcript.header(),
        text=edge_text if edge_wins else cloud_text,
        source="edge" if edge_wins else "cloud",
        version=FINAL_VERSION,
        transcript=transcript.transcript,
        draft_text=draft_text,
    )
