"""Word timings from Whisper's cross-attention, as faster-whisper computes them.

CTranslate2's ``Whisper.align`` runs the decoder once more over the tokens it generated and
returns, by dynamic time warping of the alignment heads' attention, which audio frame each token
lies on, and each token's probability. Tokens are grouped into words by faster-whisper's tokenizer
(``split_to_word_tokens``); a word starts where its first token jumps in time and ends where the
next word starts; its probability is the mean of its tokens'. Punctuation joins its word
(faster-whisper's ``merge_punctuations``). Each word keeps its leading space, so the words of a
text joined with ``""`` give the text back. Each word also keeps the sum of its tokens'
log-probabilities and their count, so that a part of a row (an utterance of a packed window) gets
its own average log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts import Word

TOKENS_PER_SECOND = 50  # 16000 / (160 samples a mel frame * the encoder's stride of 2)
MEDIAN_FILTER_WIDTH = 7
# faster-whisper's (and OpenAI's) defaults
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class AlignedWord:
    """A word as aligned in its row: times in seconds from the row's start, not yet clipped."""

    word: str
    start: float
    end: float
    probability: float
    logprob: float
    """Sum of the log-probabilities of the word's tokens."""
    tokens: int

    def to_word(self, offset_s: float = 0.0, seconds: float | None = None) -> Word:
        """The contract's word, its times shifted by ``-offset_s`` and clipped to ``[0, seconds]``."""
        top = float("inf") if seconds is None else seconds
        start = min(round(max(self.start - offset_s, 0.0), 2), top)  # rounded, yet never past the end
        return Word(
            word=self.word,
            start=start,
            end=min(round(max(self.end - offset_s, start), 2), top),
            probability=round(min(max(self.probability, 0.0), 1.0), 4),
        )


def align_words(
    model: Any,
    tokenizer: Any,
    encoder_output: Any,
    text_tokens: list[list[int]],
    frames: list[int],
    seconds: list[float],
) -> list[list[Word]]:
    """The words of each row's ``text_tokens`` with start, end (seconds from the row's start,
    within ``seconds``) and probability. ``encoder_output`` is the batch's, row for row."""
    rows = align(model, tokenizer, encoder_output, text_tokens, frames, seconds)
    return [[w.to_word(0.0, duration) for w in row] for row, duration in zip(rows, seconds, strict=True)]


def align(
    model: Any,
    tokenizer: Any,
    encoder_output: Any,
    text_tokens: list[list[int]],
    frames: list[int],
    seconds: list[float],
) -> list[list[AlignedWord]]:
    """As :func:`align_words`, with each word's token log-probabilities, times unclipped."""
    from faster_whisper.transcribe import merge_punctuations

    if not any(text_tokens):
        return [[] for _ in text_tokens]
    results = model.align(
        encoder_output, tokenizer.sot_sequence, text_tokens, frames, median_filter_width=MEDIAN_FILTER_WIDTH
    )
    out: list[list[AlignedWord]] = []
    for result, tokens, duration in zip(results, text_tokens, seconds, strict=True):
        if not tokens:
            out.append([])
            continue
        words, word_tokens = tokenizer.split_to_word_tokens(tokens + [tokenizer.eot])
        if len(word_tokens) <= 1:
            out.append([])
            continue
        text_indices = np.array([pair[0] for pair in result.alignments])
        time_indices = np.array([pair[1] for pair in result.alignments])
        probs = np.asarray(result.text_token_probs, dtype=np.float64)
        boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        jump_times = time_indices[jumps] / TOKENS_PER_SECOND
        timed = [
            {
                "word": word,
                "tokens": toks,
                "start": float(jump_times[i]) if i < jump_times.size else duration,
                "end": float(jump_times[j]) if j < jump_times.size else duration,
                "probability": float(np.mean(probs[i:j])) if j > i else 0.0,
            }
            for word, toks, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:], strict=False)
        ]
        merge_punctuations(timed, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        # merging keeps the tokens in order: each word's are the next len(tokens) of the row's
        logs = np.log(np.clip(probs, 1e-10, 1.0))
        row, at = [], 0
        for w in timed:
            n = len(w["tokens"])
            if w["word"]:
                row.append(AlignedWord(w["word"], w["start"], max(w["end"], w["start"]), w["probability"],
                                       float(logs[at : at + n].sum()), n))  # fmt: skip
            at += n
        out.append(row)
    return out
