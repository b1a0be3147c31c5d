"""Audio to the log-mel batch Whisper's encoder takes: each utterance alone in a 30 s window.

This is the one place that decides how utterances fill the encoder's windows. Here each one is
padded with silence to 30 s, as Whisper was trained (the padding is audio, so the log-mel of the
padding is that of silence, as in OpenAI's and Hugging Face's feature extractors). With packing
(:mod:`cloud.asr.packing`) a row's audio is a window of several utterances, padded the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

WINDOW_S = 30
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
HOP = 160  # samples per mel frame: 100 frames a second
WINDOW_FRAMES = WINDOW_SAMPLES // HOP


@dataclass(frozen=True)
class MelBatch:
    """The encoder's input and what each row holds."""

    features: np.ndarray
    """float32, (batch, n_mels, 3000)."""
    frames: list[int]
    """Mel frames of real audio per row (the rest is padding); word alignment looks only there."""
    seconds: list[float]
    """Seconds of audio per row (at most 30)."""


def padded_batch(audios: list[np.ndarray], extractor: Any) -> MelBatch:
    """One row per utterance, each cut to 30 s and padded with silence to 30 s.

    ``extractor`` is faster-whisper's ``FeatureExtractor`` (its ``n_mels`` from the model's
    preprocessor configuration). Longer utterances lose everything after 30 s (logged).
    """
    rows, frames, seconds = [], [], []
    for audio in audios:
        if audio.size > WINDOW_SAMPLES:
            log.warning("segment of %.1f s is longer than Whisper's window: only 30 s are transcribed",
                        audio.size / SAMPLE_RATE)  # fmt: skip
        clip = np.asarray(audio[:WINDOW_SAMPLES], dtype=np.float32)
        padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        padded[: clip.size] = clip
        rows.append(extractor(padded)[:, :WINDOW_FRAMES])
        frames.append(min(WINDOW_FRAMES, max(1, math.ceil(clip.size / HOP))))
        seconds.append(clip.size / SAMPLE_RATE)
    return MelBatch(np.ascontiguousarray(np.stack(rows), dtype=np.float32), frames, seconds)
