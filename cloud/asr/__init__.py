"""Cloud transcription engines, chosen by the ``engine`` setting (each declares a ``type_key``).

Importing this package registers every engine in :data:`ENGINES` without importing torch,
transformers, ctranslate2 or faster-whisper (an engine imports them when it is built).
"""

from __future__ import annotations

from cloud.asr import (
    whisper_ct2,  # noqa: F401  (registers "ctranslate2")
    whisper_transformers,  # noqa: F401  (registers "transformers")
)
from cloud.asr.base import ENGINES, EngineError, TranscriptionEngine
from cloud.settings import WorkerSettings

__all__ = ["ENGINES", "EngineError", "TranscriptionEngine", "create_engine"]


def create_engine(settings: WorkerSettings) -> TranscriptionEngine:
    """The engine named by ``settings.engine``, with its model loaded."""
    return ENGINES.get(settings.engine)(settings)
