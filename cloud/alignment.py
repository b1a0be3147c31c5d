"""Word alignment of an edge draft and a cloud text, for the rule's checks and the store's records.

Texts are compared as normalized words: lowercase, punctuation dropped, apostrophes inside words
kept, so "Hello, world." and "hello world" agree. The normalization is the one
``devtools/wer.py`` uses for WER (duplicated here, a few lines, because the cloud must not import
devtools); ``tests/cloud/test_rule.py`` checks that the two agree.

The alignment is rapidfuzz's Levenshtein opcodes on the two word lists (what jiwer's
``process_words`` uses inside): each aligned pair is a draft word and a cloud word with its
operation, ``equal``, ``substitute``, ``insert`` (a cloud word the draft lacks) or ``delete`` (a
draft word the cloud dropped).
"""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz.distance import Levenshtein

from cloud.captions import AlignedPair as Pair

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^\w']+")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace; apostrophes inside words stay ("don't")."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _NOT_WORD.sub(" ", text.replace("_", " "))
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The normalized words of a text."""
    return normalize(text).split()


def align(draft_text: str, cloud_text: str) -> list[Pair]:
    """The draft's and the cloud text's normalized words, aligned with the fewest edits."""
    draft, cloud = words(draft_text), words(cloud_text)
    pairs: list[Pair] = []
    for op in Levenshtein.opcodes(draft, cloud):
        d, c = draft[op.src_start : op.src_end], cloud[op.dest_start : op.dest_end]
        if op.tag == "equal":
            pairs.extend(Pair(draft=a, cloud=b, op="equal") for a, b in zip(d, c, strict=True))
        elif op.tag == "replace":  # equal lengths in a Levenshtein alignment; the rest, if ever, as insert/delete
            pairs.extend(Pair(draft=a, cloud=b, op="substitute") for a, b in zip(d, c, strict=False))
            pairs.extend(Pair(draft=a, cloud=None, op="delete") for a in d[len(c) :])
            pairs.extend(Pair(draft=None, cloud=b, op="insert") for b in c[len(d) :])
        elif op.tag == "delete":
            pairs.extend(Pair(draft=a, cloud=None, op="delete") for a in d)
        else:
            pairs.extend(Pair(draft=None, cloud=b, op="insert") for b in c)
    return pairs


def edits(pairs: list[Pair]) -> int:
    """Substitutions, insertions and deletions of an alignment: the numerator of a WER."""
    return sum(p["op"] != "equal" for p in pairs)
