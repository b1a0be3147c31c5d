"""Speech to text on the device, engines chosen by config (``asr.engine``).

Needs only numpy, onnxruntime and tokenizers: no torch, no transformers.
"""

from __future__ import annotations

from edge_agent.asr.onnx_whisper import ModelNotPrepared, OnnxWhisper

ENGINES: dict[str, type[OnnxWhisper]] = {"onnx": OnnxWhisper}

__all__ = ["ENGINES", "ModelNotPrepared", "OnnxWhisper"]
