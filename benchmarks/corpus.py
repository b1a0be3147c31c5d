"""The speech corpus the ASR benchmarks measure on: the bundled sample and sentences of
:data:`TEXTS` spoken by the speech generator (``devtools.speech``: Piper, espeak-ng, with or without
noise), cut into segments by the agent's own VAD, each with the reference text it overlaps."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from devtools.speech import Recording, sample_recording, synthesize

TEXTS = [
    "It was a bright cold day in April and the clocks were striking thirteen.",
    "Call me later tonight.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "I would like a cup of tea with milk and no sugar please, and some biscuits if you have them.",
    "The meeting has been moved to Thursday afternoon because half of the team is travelling.",
    "Please turn off the lights in the kitchen before you leave the house.",
    "Seventeen people signed up for the workshop, but only nine of them showed up on Monday.",
    "Our flight to Lisbon leaves at half past six, so we should be at the airport by five.",
    "The thermostat reads twenty one degrees, which is warm enough for the baby's room.",
    "Remind me to water the tomatoes and to call the plumber about the leaking pipe.",
    "The committee approved the budget after a long and rather heated discussion.",
    "She bought three apples, a loaf of bread and a jar of honey at the corner shop.",
    "If the train is late again, we will take a taxi straight to the concert hall.",
    "Scientists measured the temperature of the lake every morning for a whole year.",
    "He forgot his umbrella on the bus and walked home in the pouring rain.",
    "The children built a small wooden boat and sailed it across the pond.",
]


def recordings(
    workdir: Path, texts: list[str], voices: Iterable[tuple[str, float | None]], *, seed: int, sample: bool = True
) -> list[Recording]:
    """The bundled sample (with ``sample``) and ``texts`` spoken by each (voice, SNR in dB or None)."""
    out = [sample_recording()] if sample else []
    for voice, snr in voices:
        out.append(synthesize(texts, workdir / f"{voice}-{snr}-{seed}.wav", voice=voice, snr_db=snr, seed=seed,
                              gap_s=(0.9, 1.3)))  # fmt: skip
    return out


def vad_segments(recording: Recording) -> list[tuple[bytes, str]]:
    """(PCM16 bytes, reference text) per segment the agent's VAD cuts from ``recording``."""
    import soundfile as sf

    from edge_agent.vad import WebrtcSegmenter

    pcm = sf.read(str(recording.path), dtype="int16")[0].tobytes()
    vad = WebrtcSegmenter()
    segments = []
    for seg in vad.feed(pcm, 0.0) + vad.flush():
        said = [u.text for u in recording.utterances if u.start_s < seg.ended_at and u.end_s > seg.started_at]
        segments.append((seg.pcm, " ".join(said)))
    return segments


def as_float(pcm: bytes) -> np.ndarray:
    """PCM16 as float32 in [-1, 1), what the ASR engines take."""
    return np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
