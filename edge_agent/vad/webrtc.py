"""The ``webrtc`` VAD engine: webrtcvad on 10, 20 or 30 ms frames, its mode switchable live."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_agent.vad.segmenter import DEFAULT_TIMING, ENGINES, Segmenter, VadTiming
from runtime.plugins import require

if TYPE_CHECKING:
    from edge_agent.settings import VadSettings

SAMPLE_RATES = (8000, 16000, 32000, 48000)
FRAME_MS = (10, 20, 30)
AGGRESSIVENESS = (0, 1, 2, 3)


def _check_aggressiveness(aggressiveness: int) -> None:
    if aggressiveness not in AGGRESSIVENESS:
        raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")


@ENGINES.register
class WebrtcSegmenter(Segmenter):
    """webrtcvad on 10, 20 or 30 ms frames (``aggressiveness`` 0-3: how much audio is cut as non-speech)."""

    type_key = "webrtc"

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        frame_ms: int = 30,
        aggressiveness: int = 2,
        timing: VadTiming = DEFAULT_TIMING,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES} for webrtcvad, got {sample_rate!r}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_MS} for webrtcvad, got {frame_ms!r}")
        _check_aggressiveness(aggressiveness)
        webrtcvad = require("webrtcvad", "edge", "the webrtc VAD engine")
        super().__init__(sample_rate=sample_rate, frame_samples=sample_rate * frame_ms // 1000, timing=timing)
        self.aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)

    @classmethod
    def from_settings(cls, settings: VadSettings, sample_rate: int) -> WebrtcSegmenter:
        return cls(
            sample_rate=sample_rate, aggressiveness=settings.aggressiveness, timing=VadTiming.from_settings(settings)
        )

    def set_aggressiveness(self, aggressiveness: int) -> None:
        """Switch mode live (remote configuration): webrtcvad reads it per frame, and the call holds
        the GIL, so it lands between two frames."""
        _check_aggressiveness(aggressiveness)
        self._vad.set_mode(aggressiveness)
        self.aggressiveness = aggressiveness

    def _is_speech(self, data: bytes, samples: np.ndarray) -> bool:
        return bool(self._vad.is_speech(data, self.sample_rate))
