"""The interface every on-device speech recognizer implements, and the registry that picks one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from contracts import Transcript
from runtime.plugins import Registry

if TYPE_CHECKING:
    from edge_agent.settings import AsrSettings


class SpeechRecognizer(ABC):
    """Turns one utterance of 16 kHz mono audio (at most 30 s) into a transcript; what the drafter
    and the agent use of an engine.

    Subclasses set ``type_key`` (the ``asr.engine`` setting that selects them), register with
    ``@ENGINES.register`` and build themselves from the settings in :meth:`from_settings`. They load
    their model once when built (heavy imports happen there too); ``transcribe`` may be called from
    any thread.
    """

    type_key: ClassVar[str]
    model_id: str
    """The model's name, written into every transcript."""
    windowed: bool = False
    """True when ``window_s`` can shorten the encoder window (cheaper, rougher early drafts)."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: AsrSettings) -> SpeechRecognizer:
        """The engine with its model loaded, from the agent's ``asr`` settings."""

    @abstractmethod
    def transcribe(self, audio: np.ndarray, *, window_s: float | None = None) -> Transcript:
        """Transcript of mono 16 kHz audio (float32 in [-1, 1], or int16) of at most 30 s.

        ``window_s`` asks for an encoder window that short (honoured only when :attr:`windowed`).
        """

    def warmup(self) -> None:  # noqa: B027 - an optional hook, not every engine pays a first-call cost
        """Run once before the first real utterance so that it pays no start-up cost."""


ENGINES: Registry[SpeechRecognizer] = Registry("ASR engine")
