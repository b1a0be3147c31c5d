"""The interface every cloud transcription engine implements, and the registry that picks one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from cloud.settings import WorkerSettings
from contracts import Transcript
from runtime.plugins import Registry


class EngineError(RuntimeError):
    """An engine cannot start: a missing model or device; the message says how to fix it."""


class TranscriptionEngine(ABC):
    """Turns a batch of 16 kHz mono float32 utterances into transcripts, in the same order.

    Subclasses set ``type_key`` (the ``engine`` setting that selects them) and register with
    ``@ENGINES.register``. They are built from the worker's settings and load their model once in
    ``__init__``; heavy imports happen there too (a missing package raises
    :class:`~runtime.plugins.MissingPackage` naming the extra to install).
    """

    type_key: ClassVar[str]
    model_id: str
    last_padding_s: float = 0.0
    """Seconds of padding (not input audio: silence up to each window's 30 s, gaps between packed
    utterances) in the encoder windows of the last :meth:`transcribe_batch` call."""
    last_windows: int = 0
    """Encoder windows (rows) the last :meth:`transcribe_batch` call ran, retries included."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings

    @abstractmethod
    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        """One transcript per input array, in input order."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not every engine holds resources
        """Release the model."""


ENGINES: Registry[TranscriptionEngine] = Registry("transcription engine")
