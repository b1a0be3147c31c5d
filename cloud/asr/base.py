"""The interface every cloud transcription engine implements, and the registry that picks one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from cloud.settings import WorkerSettings
from contracts import Transcript

ENGINES: dict[str, type[TranscriptionEngine]] = {}


class EngineError(RuntimeError):
    """An engine cannot start: a missing package or model; the message says how to fix it."""


class TranscriptionEngine(ABC):
    """Turns a batch of 16 kHz mono float32 utterances into transcripts, in the same order.

    Subclasses set ``type_key`` (the ``engine`` setting that selects them) and are registered by
    :func:`register`. They load their model once in ``__init__``; heavy imports happen there too.
    """

    type_key: ClassVar[str]
    model_id: str

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings

    @abstractmethod
    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        """One transcript per input array, in input order."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not every engine holds resources
        """Release the model."""


def register(cls: type[TranscriptionEngine]) -> type[TranscriptionEngine]:
    """Class decorator: make an engine selectable by its ``type_key``."""
    if cls.type_key in ENGINES:
        raise ValueError(f"two transcription engines claim type_key {cls.type_key!r}")
    ENGINES[cls.type_key] = cls
    return cls
