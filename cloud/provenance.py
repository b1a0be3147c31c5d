"""What the store keeps about how a final was made: the alignment of draft and cloud words, where
each word of the final came from, and how far the draft was from the final.

Computed from the :class:`~contracts.Final` the rule made and the stored draft, never deciding
anything: :meth:`cloud.store.Store.record_final` stores it with the final, in the same transaction.

- ``alignment``: draft and cloud words aligned (:func:`cloud.alignment.align`); None without a
  draft, or for a deadline final (no cloud text yet).
- ``words``: per word of the final, the model that produced it and its probability (the cloud
  engine's word probabilities when the final is the cloud text and the engine gave words; None for
  draft words, whose probabilities the store does not keep).
- ``edits``, ``final_words``, ``disagreement``: the draft's word errors against the final, the
  final's word count and their quotient, the WER of the draft taking the final as the reference
  (a final without words: 0.0 if the draft has none either, else 1.0). None where ``alignment`` is
  None: a deadline final is the draft itself and would read as perfect agreement. Aggregates pool
  ``edits`` over ``final_words`` (:meth:`cloud.store.Store.disagreement`), the way WER is pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.alignment import Pair, align, edits, words
from cloud.captions import WordSource
from contracts import Final


@dataclass(frozen=True)
class Provenance:
    """How one final was made (see the module docstring)."""

    alignment: list[Pair] | None
    words: list[WordSource]
    edits: int | None
    final_words: int | None
    disagreement: float | None


def provenance(final: Final, draft_text: str | None, draft_model_id: str | None) -> Provenance:
    """The provenance of ``final``, made from the stored draft (None: none known)."""
    if final.source == "cloud":
        cloud = final.transcript
        spoken = [w for span in cloud.segments for w in span.words if w.word.strip()]
        if spoken:  # the engine's words; else (none given, or cut to fit a record) the text's
            sources = [
                WordSource(word=w.word.strip(), model_id=cloud.model_id, probability=w.probability) for w in spoken
            ]
        else:
            sources = [WordSource(word=w, model_id=cloud.model_id, probability=None) for w in final.text.split()]
    else:
        model_id = draft_model_id or final.transcript.model_id
        sources = [WordSource(word=w, model_id=model_id, probability=None) for w in final.text.split()]
    if draft_text is None or final.reason == "deadline":
        return Provenance(alignment=None, words=sources, edits=None, final_words=None, disagreement=None)
    alignment = align(draft_text, final.transcript.text)
    errors = edits(alignment) if final.source == "cloud" else 0
    count = len(words(final.text))
    rate = errors / count if count else float(errors > 0)
    return Provenance(alignment=alignment, words=sources, edits=errors, final_words=count, disagreement=rate)
