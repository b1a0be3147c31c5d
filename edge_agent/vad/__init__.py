"""Cut a stream of 16 kHz mono PCM16 into speech segments: webrtcvad or Silero (no torch).

The state machine and its events are in :mod:`edge_agent.vad.segmenter`; each engine is a plugin
module that registers in :data:`ENGINES` by its ``type_key`` (the ``vad.engine`` setting).
Importing this package registers them all without importing their packages (those load when an
engine is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.vad.segmenter import ENGINES, Pause, Segmenter, SpeechSegment, VadEvent, VadTiming
from edge_agent.vad.silero import SileroSegmenter, VadModelMissing
from edge_agent.vad.webrtc import WebrtcSegmenter

if TYPE_CHECKING:
    from edge_agent.settings import VadSettings

__all__ = [
    "ENGINES",
    "Pause",
    "Segmenter",
    "SileroSegmenter",
    "SpeechSegment",
    "VadEvent",
    "VadModelMissing",
    "WebrtcSegmenter",
    "VadTiming",
    "create_segmenter",
]


def create_segmenter(settings: VadSettings, sample_rate: int = 16000) -> Segmenter:
    """The segmenter ``settings.engine`` names, built from the agent's ``vad`` settings."""
    return ENGINES.get(settings.engine).from_settings(settings, sample_rate)
