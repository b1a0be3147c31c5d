"""Cloud transcription engines, chosen by the ``engine`` setting (each declares a ``type_key``)."""

from __future__ import annotations

from cloud.asr import whisper_transformers  # noqa: F401  (registers "transformers")
from cloud.asr.base import ENGINES, EngineError, TranscriptionEngine, register
from cloud.settings import WorkerSettings

__all__ = ["ENGINES", "EngineError", "TranscriptionEngine", "create_engine", "register"]


def create_engine(settings: WorkerSettings) -> TranscriptionEngine:
    """The engine named by ``settings.engine``, with its model loaded."""
    cls = ENGINES.get(settings.engine)
    if cls is None:
        raise EngineError(f"unknown engine {settings.engine!r}; known: {', '.join(sorted(ENGINES))}")
    return cls(settings)
