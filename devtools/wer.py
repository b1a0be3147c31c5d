"""Word error rate between a reference transcript and a hypothesis, after one shared normalization."""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^\w']+")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace; apostrophes inside words stay ("don't").

    Curly apostrophes become straight ones; quote marks at word edges go. Hyphens and other
    punctuation split words ("well-known" -> "well known").
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _NOT_WORD.sub(" ", text.replace("_", " "))
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate (substitutions + deletions + insertions) / reference words, in [0, inf).

    An empty reference gives 0.0 against an empty hypothesis and inf against any words.
    """
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else float("inf")
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))
