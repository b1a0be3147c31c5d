"""Speech to text on the device, engines chosen by config (``asr.engine``).

Each engine implements :class:`SpeechRecognizer` and registers in :data:`ENGINES` by its
``type_key``. Importing this package registers them all without importing onnxruntime or
tokenizers; no engine needs torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts.manifest import ModelNotPrepared
from edge_agent.asr.base import ENGINES, SpeechRecognizer
from edge_agent.asr.onnx_whisper import OnnxWhisper

if TYPE_CHECKING:
    from edge_agent.settings import AsrSettings

__all__ = ["ENGINES", "ModelNotPrepared", "OnnxWhisper", "SpeechRecognizer", "create_recognizer"]


def create_recognizer(settings: AsrSettings) -> SpeechRecognizer:
    """The engine ``settings.engine`` names, with its model loaded, from the agent's ``asr`` settings."""
    return ENGINES.get(settings.engine).from_settings(settings)
