"""Packing: short utterances laid end to end into Whisper's 30 s windows, and their words split back.

Whisper's encoder always sees 30 s. A batch of 2 s utterances, each padded alone, spends 93 % of
the encoder's work (and much of the decoder's cross-attention) on silence. Here the short ones of a
batch share windows instead: :func:`plan` lays them out, first-fit decreasing (the longest first,
each into the first window with room: the fewest windows; a window's order does not matter, since
its words go back by time), with :data:`GAP_S` of silence between two utterances so that Whisper
hears a pause and the word aligner has a place to cut. Utterances of :data:`MAX_PACKED_S` or more
(a second one would barely fit) are transcribed alone, as without packing. WhisperS2T stitches a
recording's own VAD pieces into windows in their order; ours are unrelated utterances, so the order
is free and only the count of windows counts.

After one generate and one word alignment over the window, :func:`split_words` hands each word to
the utterance where it starts. It refuses (and the engine transcribes those utterances again alone,
counted) when the assignment is not clean: a word that starts in the middle of a gap (it belongs to
neither side for sure), word starts out of order, an utterance that got no words at all (text
missing: dropped by the decoder, or silence, which alone gives its proper empty result), or one
with a stretch of more than :data:`MAX_UNCOVERED_S` where no word starts (measured: tiny.en in a
packed window sometimes skips most of an utterance, and the aligner spreads the next one's first
words over it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloud.audio import SAMPLE_RATE

WINDOW_S = 30.0
GAP_S = 0.8
"""Silence between two packed utterances (seconds)."""
MAX_PACKED_S = 15.0
"""Utterances at least this long are transcribed alone."""
EDGE_TOLERANCE_S = 0.24
"""A word may start this far outside its utterance (the aligner's jitter: 20 ms steps, onsets
early in the silence before a word); the rest of a gap is no one's."""
MAX_UNCOVERED_S = 2.0
"""The VAD cuts segments at pauses and trims them to speech: a segment with a stretch this long
where no word starts (from its start to its first word, between two words, from its last word to
its end) lost words (the decoder skipped them, or the aligner gave them to a neighbour): it is
redone alone."""


@dataclass(frozen=True)
class Placed:
    """One utterance in a window: its index in the batch and where it starts (seconds)."""

    index: int
    offset_s: float
    seconds: float

    @property
    def end_s(self) -> float:
        return self.offset_s + self.seconds


@dataclass(frozen=True)
class Window:
    """A 30 s encoder window: the utterances it holds, in time order."""

    parts: tuple[Placed, ...]

    @property
    def audio_s(self) -> float:
        """Seconds of real audio (the utterances, not the gaps)."""
        return sum(p.seconds for p in self.parts)

    @property
    def used_s(self) -> float:
        """Seconds from the window's start to the end of its last utterance."""
        return self.parts[-1].end_s if self.parts else 0.0


def plan(seconds: Sequence[float], gap_s: float = GAP_S, window_s: float = WINDOW_S,
         max_packed_s: float = MAX_PACKED_S) -> tuple[list[Window], list[int]]:  # fmt: skip
    """The windows of the short utterances (first-fit decreasing) and the indices of those that go
    alone (at least ``max_packed_s``). A window holding a single utterance is that utterance alone:
    it is returned among the alone ones, so every window returned holds two or more."""
    alone = [i for i, s in enumerate(seconds) if s >= max_packed_s]
    short = sorted((i for i, s in enumerate(seconds) if s < max_packed_s), key=lambda i: (-seconds[i], i))
    bins: list[list[int]] = []
    fill: list[float] = []
    for i in short:
        for b, used in enumerate(fill):
            if used + gap_s + seconds[i] <= window_s:
                bins[b].append(i)
                fill[b] = used + gap_s + seconds[i]
                break
        else:
            bins.append([i])
            fill.append(seconds[i])
    windows = []
    for members in bins:
        if len(members) == 1:
            alone.append(members[0])
            continue
        parts, at = [], 0.0
        for i in sorted(members):  # batch order inside the window
            parts.append(Placed(i, at, seconds[i]))
            at += seconds[i] + gap_s
        windows.append(Window(tuple(parts)))
    return windows, sorted(alone)


def window_audio(window: Window, audios: Sequence[np.ndarray]) -> np.ndarray:
    """The window's audio: its utterances at their offsets, silence (zeros) in the gaps."""
    out = np.zeros(round(window.used_s * SAMPLE_RATE) + 1, dtype=np.float32)
    for p in window.parts:
        at = round(p.offset_s * SAMPLE_RATE)
        clip = np.asarray(audios[p.index], dtype=np.float32)
        out[at : at + clip.size] = clip
    return out[: max(round(p.offset_s * SAMPLE_RATE) + audios[p.index].size for p in window.parts)]


def split_words(
    window: Window, starts: Sequence[float], tolerance_s: float = EDGE_TOLERANCE_S
) -> list[list[int] | None]:
    """The positions of ``starts`` (each word's start in the window, in order) that belong to each
    of the window's utterances, or ``None`` for an utterance whose words cannot be assigned cleanly.

    Returns one entry per part: a list of word positions, or ``None`` (redo that utterance alone).
    """
    bad: set[int] = set()
    owners: list[int | None] = []
    for start in starts:
        owner = None
        for k, p in enumerate(window.parts):
            if p.offset_s - tolerance_s <= start <= p.end_s + tolerance_s:
                owner = k
                break
        if owner is None:  # in the middle of a gap, or past the end: both neighbours are suspect
            before = [k for k, p in enumerate(window.parts) if p.end_s <= start]
            bad.update({before[-1], before[-1] + 1} if before else {0})
        owners.append(owner)
    last = -1
    for position, owner in enumerate(owners):
        if owner is None:
            continue
        if owner < last or (position and starts[position] < starts[position - 1]):
            bad.update({owner, last})  # out of order: the words of both are mixed up
        last = max(last, owner)
    owned: list[list[int]] = [[] for _ in window.parts]
    for position, owner in enumerate(owners):
        if owner is not None:
            owned[owner].append(position)
    for k, (p, positions) in enumerate(zip(window.parts, owned, strict=True)):
        marks = [p.offset_s, *(starts[i] for i in positions), p.end_s]
        if positions and max(b - a for a, b in zip(marks, marks[1:], strict=False)) > MAX_UNCOVERED_S:
            bad.add(k)  # a stretch of its speech has no words
    return [None if k in bad or not positions else positions for k, positions in enumerate(owned)]
