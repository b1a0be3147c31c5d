"""The ``silero`` VAD engine: the Silero v6 ONNX model in ONNX Runtime, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.vad.segmenter import DEFAULT_TIMING, ENGINES, Segmenter, VadTiming
from runtime.plugins import require

if TYPE_CHECKING:
    from edge_agent.settings import VadSettings


class VadModelMissing(FileNotFoundError):
    """The Silero ONNX file is not where the settings say."""


@ENGINES.register
class SileroSegmenter(Segmenter):
    """Silero VAD v6 in ONNX Runtime: 512-sample windows at 16 kHz, each with the 64 samples before it.

    The recurrent state and the context are carried from window to window. A window is speech when
    its probability reaches ``threshold``, or, while in speech, stays at or above
    ``threshold - 0.15`` (Silero's own hysteresis). Takes the model of faster-whisper's assets
    (inputs ``input``, ``h``, ``c``) or of the ``silero-vad`` package (``input``, ``state``, ``sr``).
    """

    type_key = "silero"
    WINDOW = 512
    CONTEXT = 64

    def __init__(
        self,
        *,
        model_path: Path,
        sample_rate: int = 16000,
        threshold: float = 0.5,
        timing: VadTiming = DEFAULT_TIMING,
    ) -> None:
        if sample_rate != 16000:
            raise ValueError(f"the silero engine takes 16000 Hz audio, got {sample_rate!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        model_path = Path(model_path).expanduser()
        if not model_path.is_file():
            raise VadModelMissing(
                f"no Silero VAD model at {model_path}: run `edgecap models prepare` "
                "(it copies silero_vad.onnx into <models_dir>/vad/) or set vad.model_path"
            )
        super().__init__(sample_rate=sample_rate, frame_samples=self.WINDOW, timing=timing)
        ort = require("onnxruntime", "edge", "the silero VAD engine")

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self._session.get_inputs()}
        self._stateful = "state" in names  # the silero-vad package's model; else faster-whisper's
        if not ({"input", "state", "sr"} <= names or {"input", "h", "c"} <= names):
            raise ValueError(f"{model_path} is not a Silero VAD model (inputs {sorted(names)})")
        self.model_path = model_path
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self._reset_engine()

    @classmethod
    def from_settings(cls, settings: VadSettings, sample_rate: int) -> SileroSegmenter:
        return cls(
            model_path=settings.model_path,
            sample_rate=sample_rate,
            threshold=settings.threshold,
            timing=VadTiming.from_settings(settings),
        )

    def _reset_engine(self) -> None:
        self._context = np.zeros((1, self.CONTEXT), np.float32)
        if self._stateful:
            self._state: list[np.ndarray] = [np.zeros((2, 1, 128), np.float32)]
        else:
            self._state = [np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32)]
        self._in_speech = False
        self.last_probability = 0.0

    def probability(self, samples: np.ndarray) -> float:
        """Speech probability of the next 512-sample window (float32 in [-1, 1]); advances the state."""
        window = np.concatenate([self._context, samples.reshape(1, self.WINDOW).astype(np.float32)], axis=1)
        if self._stateful:
            feed = {"input": window, "state": self._state[0], "sr": np.array(self.sample_rate, np.int64)}
        else:
            feed = {"input": window, "h": self._state[0], "c": self._state[1]}
        prob, *self._state = self._session.run(None, feed)
        self._context = window[:, -self.CONTEXT :]
        return float(np.asarray(prob).reshape(-1)[0])

    def _is_speech(self, data: bytes, samples: np.ndarray) -> bool:
        self.last_probability = p = self.probability(samples / 32768.0)
        self._in_speech = p >= self.threshold or (self._in_speech and p >= self.neg_threshold)
        return self._in_speech
