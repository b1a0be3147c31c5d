"""Whisper through Hugging Face transformers: any local checkpoint, batched, greedy or beam search.

fp32 on CPU, fp16 on CUDA. The checkpoint is a local directory (``edgecap models prepare`` writes
``…/<model>/hf``, taken when ``model_dir`` is the model's root; production may point at a
downloaded ``openai/whisper-large-v3``); nothing is ever fetched from the hub. The reference
engine: the default is ``ctranslate2``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cloud.asr import model_files
from cloud.asr.base import ENGINES, EngineError, TranscriptionEngine
from cloud.audio import SAMPLE_RATE
from cloud.settings import WorkerSettings
from contracts import Transcript, TranscriptSegment
from runtime.plugins import require

log = logging.getLogger(__name__)

WINDOW_S = 30.0
SUBFOLDER = "hf"


def weights_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weights (one ``model.safetensors`` or its shards, else ``pytorch_model.bin``)."""
    return sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))


@ENGINES.register
class TransformersWhisper(TranscriptionEngine):
    """``engine = "transformers"``: WhisperForConditionalGeneration + WhisperProcessor."""

    type_key = "transformers"

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(settings)
        model_dir = model_files.engine_dir(settings.model_dir, SUBFOLDER, "*.safetensors", "transformers")
        if not (model_dir / "config.json").is_file():
            raise EngineError(f"no Whisper checkpoint in {model_dir}: run `edgecap models prepare` or set model_dir")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        torch = require("torch", "cloud", "the transformers engine")
        transformers = require("transformers", "cloud", "the transformers engine")

        self._torch = torch
        if settings.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = settings.device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineError("device is cuda but torch sees no CUDA device")
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32

        started = time.monotonic()
        self.processor: Any = transformers.WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        model: Any = transformers.WhisperForConditionalGeneration.from_pretrained(
            model_dir, dtype=self.dtype, local_files_only=True
        )
        self.model: Any = model.to(self.device).eval()
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.language = settings.language if self.multilingual else "en"
        precision = "fp16" if self.dtype == torch.float16 else "fp32"
        self.model_id = settings.model_id or model_files.model_id(
            model_dir, f"hf-{precision}", weights_files(model_dir)
        )
        log.info(
            "loaded %s from %s on %s (%s) in %.1f s",
            self.model_id,
            model_dir,
            self.device,
            str(self.dtype).removeprefix("torch."),
            time.monotonic() - started,
        )

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        texts = [""] * len(audios)
        todo = [i for i, a in enumerate(audios) if a.size > 0]
        for i in todo:
            if audios[i].size > WINDOW_S * SAMPLE_RATE:
                log.warning(
                    "segment of %.1f s is longer than Whisper's window: only 30 s are transcribed",
                    audios[i].size / SAMPLE_RATE,
                )
        self.last_windows = len(todo)  # each utterance padded alone to 30 s by the feature extractor
        self.last_padding_s = sum(WINDOW_S - min(WINDOW_S, audios[i].size / SAMPLE_RATE) for i in todo)
        if todo:
            for i, text in zip(todo, self._generate([audios[i] for i in todo]), strict=True):
                texts[i] = text
        produced_at = time.time()
        return [
            Transcript(
                text=text,
                model_id=self.model_id,
                language=self.language,
                segments=[TranscriptSegment(start=0.0, end=audio.size / SAMPLE_RATE, text=text)] if text else [],
                produced_at=produced_at,
            )
            for audio, text in zip(audios, texts, strict=True)
        ]

    def _generate(self, audios: list[np.ndarray]) -> list[str]:
        torch = self._torch
        inputs = self.processor.feature_extractor(
            [a.astype(np.float32, copy=False) for a in audios],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            return_attention_mask=True,
        )
        features = inputs.input_features.to(self.device, self.dtype)
        mask = inputs.attention_mask.to(self.device)
        options: dict[str, Any] = {
            "do_sample": False,
            "num_beams": self.settings.beam_size,
            "max_new_tokens": self.settings.max_new_tokens,
        }
        if self.multilingual:
            options["task"] = "transcribe"
            if self.language:
                options["language"] = self.language
        with torch.inference_mode():
            tokens = self.model.generate(features, attention_mask=mask, **options)
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
