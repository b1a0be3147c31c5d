"""The ``onnx`` ASR engine: Whisper in ONNX Runtime, int8 encoder + decoder made by ``edgecap models prepare``.

Needs only numpy, onnxruntime and tokenizers (the last two imported when the engine is built).
What it knows of the model besides the graphs comes from its typed manifest
(:class:`contracts.manifest.ModelManifest`). Greedy decoding with a key/value cache, without
timestamps: one transcript segment spans the audio (the agent's VAD already cut it into an
utterance of at most 30 s). Tokens are suppressed as Whisper does (its ``suppress_tokens``, the
special tokens, timestamps, and blank/end-of-text at the first step); a window that the model
thinks holds no speech (Whisper's no-speech and log-probability thresholds) gives empty text.

Speed (2 cores): the encoder over the padded 30 s window is most of the cost (~140-200 ms for
tiny.en, 60 % of it in the fp32 attention over 1500 positions). When the ``onnx`` package is
importable, the encoder graph is patched at load (its input length made free and the positional
embedding sliced to it), so ``transcribe(audio, window_s=10)`` encodes a 10 s window instead:
~25 ms, at some cost in accuracy (Whisper was trained on 30 s windows), which suits an early draft.
Without ``window_s`` the full window is used and results are unchanged. The sessions do not spin
their thread pools between runs: the encoder's and decoder's pools would fight over 2 cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contracts import Transcript, TranscriptSegment
from contracts.manifest import MANIFEST, ModelManifest, ModelNotPrepared
from edge_agent.asr.base import ENGINES, SpeechRecognizer
from edge_agent.asr.mel import N_SAMPLES, SAMPLE_RATE, log_mel
from runtime.plugins import require

if TYPE_CHECKING:
    import onnxruntime as ort

    from edge_agent.settings import AsrSettings

log = logging.getLogger(__name__)

FILES = ("encoder.onnx", "decoder.onnx", "tokenizer.json", MANIFEST)
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# Whisper samples at most half the text context per window.
MAX_NEW_TOKENS = 224
# A runaway decoding loop (repeating a phrase) stops at this many tokens per second of audio.
MAX_TOKENS_PER_S = 8.0
# A shortened encoder window holds the audio plus this much silence, in steps of WINDOW_STEP_S
# (few distinct shapes: ONNX Runtime plans memory once per shape).
WINDOW_MARGIN_S = 2.0
WINDOW_STEP_S = 5.0


@dataclass(frozen=True)
class Decoded:
    """Result of greedy decoding of one window."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def _session(model: Path | bytes, threads: int) -> ort.InferenceSession:
    ort = require("onnxruntime", "edge", "the onnx ASR engine")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def windowed_encoder(path: Path, n_positions: int, d_model: int) -> bytes | None:
    """The encoder graph with a free input length (positional embedding sliced to it), or None.

    None when the ``onnx`` package is missing or the graph does not have the expected shape; the
    full-window encoder is then used as it is.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        log.info("onnx is not installed: the encoder always takes the full 30 s window")
        return None
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: tuple(i.dims) for i in graph.initializer}
    positions = [
        (node, name)
        for node in graph.node
        if node.op_type == "Add"
        for name in node.input
        if initializers.get(name) == (n_positions, d_model)
    ]
    dims = graph.input[0].type.tensor_type.shape.dim if len(graph.input) == 1 else []
    if len(positions) != 1 or len(dims) != 3:
        log.warning("encoder graph not as expected: it keeps the full 30 s window")
        return None
    add, table = positions[0]
    hidden = next(name for name in add.input if name != table)
    dims[2].ClearField("dim_value")
    dims[2].dim_param = "frames"
    graph.initializer.append(helper.make_tensor("window/zero", TensorProto.INT64, [1], [0]))
    at = list(graph.node).index(add)
    graph.node.insert(at, helper.make_node("Shape", [hidden], ["window/length"], start=1, end=2))
    graph.node.insert(at + 1, helper.make_node(
        "Slice", [table, "window/zero", "window/length", "window/zero"], ["window/positions"]))
    add.input[list(add.input).index(table)] = "window/positions"
    for output in graph.output:
        for dim in output.type.tensor_type.shape.dim:
            if dim.dim_value == n_positions:
                dim.ClearField("dim_value")
                dim.dim_param = "positions"
    return model.SerializeToString()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


@ENGINES.register
class OnnxWhisper(SpeechRecognizer):
    """Speech to text on the device; sessions are built once and reused (thread-safe ``transcribe``)."""

    type_key = "onnx"

    def __init__(self, model_dir: Path, *, threads: int = 2, language: str | None = None) -> None:
        model_dir = Path(model_dir).expanduser()
        missing = [f for f in FILES if not (model_dir / f).is_file()]
        if missing:
            raise ModelNotPrepared(
                f"{model_dir} lacks {', '.join(missing)}: run `edgecap models prepare` "
                "and point the agent at <models_dir>/<model>/onnx-int8"
            )
        self.model_dir = model_dir
        self.manifest = manifest = ModelManifest.load(model_dir / MANIFEST)
        self.model_id = manifest.model_id
        self.multilingual = manifest.multilingual
        self._tokens = manifest.tokens
        self.language = self._check_language(language)
        patched = windowed_encoder(model_dir / "encoder.onnx", manifest.n_frames // 2, manifest.d_model)
        self.windowed = patched is not None
        self._encoder = _session(patched if patched is not None else model_dir / "encoder.onnx", threads)
        del patched
        self._decoder = _session(model_dir / "decoder.onnx", threads)
        tokenizers = require("tokenizers", "edge", "the onnx ASR engine")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._suppress = self._suppress_mask()
        self._begin_suppress = np.array(manifest.begin_suppress_tokens, dtype=np.int64)
        layers, heads = manifest.decoder_layers, manifest.decoder_heads
        self._past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]
        self._cross_names = [f"cross_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]
        empty = np.zeros((1, heads, 0, manifest.d_model // heads), np.float32)
        self._empty_past = [empty] * (2 * layers)
        log.info("loaded %s from %s (%d threads)", self.model_id, model_dir, threads)

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> OnnxWhisper:
        return cls(settings.model_dir, threads=settings.threads, language=settings.language)

    def _check_language(self, language: str | None) -> str | None:
        if not self.multilingual:
            if language not in (None, "en"):
                raise ValueError(f"{self.model_id} is English-only; language {language!r} is not available")
            return "en"
        if language is not None and language not in self.manifest.languages:
            raise ValueError(f"{self.model_id} does not know language {language!r}")
        return language

    def _suppress_mask(self) -> np.ndarray:
        vocab = self.manifest.vocab_size
        mask = np.zeros(vocab, dtype=bool)
        mask[[t for t in self.manifest.suppress_tokens if 0 <= t < vocab]] = True
        # Every special token but end-of-text, and all timestamps (we decode without them).
        mask[self._tokens.eos + 1 :] = True
        return mask

    def warmup(self) -> None:
        """Run one short window so the first real segment pays no start-up cost."""
        self.decode(np.zeros(SAMPLE_RATE, dtype=np.float32), max_new_tokens=2)
        if self.windowed:
            self.decode(np.zeros(SAMPLE_RATE, dtype=np.float32), max_new_tokens=2, window_s=2 * WINDOW_STEP_S)

    def _prompt(self, cross: list[np.ndarray]) -> tuple[list[int], str | None]:
        tokens = self._tokens
        if not self.multilingual:
            return [tokens.sot, tokens.no_timestamps], "en"
        language = self.language or self._detect_language(cross)
        lang_id = self.manifest.languages[language]
        return [tokens.sot, lang_id, tokens.transcribe, tokens.no_timestamps], language

    def _detect_language(self, cross: list[np.ndarray]) -> str:
        logits = self._decoder.run(["logits"], self._feed([self._tokens.sot], None, cross))[0]
        languages = self.manifest.languages
        ids = np.array(list(languages.values()))
        best = int(ids[np.argmax(logits[0, -1, ids])])
        return next(code for code, token in languages.items() if token == best)

    def _feed(self, ids: list[int], past: list[np.ndarray] | None, cross: list[np.ndarray]) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {"input_ids": np.array([ids], dtype=np.int64)}
        feed.update(zip(self._past_names, past if past is not None else self._empty_past, strict=True))
        feed.update(zip(self._cross_names, cross, strict=True))
        return feed

    @staticmethod
    def _audio(audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        audio = audio.astype(np.float32, copy=False)
        if audio.shape[0] > N_SAMPLES:
            raise ValueError(f"audio is {audio.shape[0] / SAMPLE_RATE:.1f} s; at most 30 s per call")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        return audio

    def window_samples(self, n_audio: int, window_s: float | None) -> int:
        """Samples of the encoder window for ``n_audio`` samples of audio (30 s unless shortened)."""
        if window_s is None or not self.windowed:
            return N_SAMPLES
        seconds = max(window_s, n_audio / SAMPLE_RATE + WINDOW_MARGIN_S)
        seconds = np.ceil(seconds / WINDOW_STEP_S) * WINDOW_STEP_S
        return min(N_SAMPLES, int(seconds * SAMPLE_RATE))

    def decode(
        self, audio: np.ndarray, *, max_new_tokens: int = MAX_NEW_TOKENS, window_s: float | None = None
    ) -> tuple[Decoded, str | None]:
        """Greedy tokens of one window of float32 mono 16 kHz audio (<= 30 s), and its language.

        ``window_s`` shortens the encoder window to at least that many seconds (see the module).
        """
        audio = self._audio(audio)
        features = log_mel(audio, self.manifest.n_mels, self.window_samples(audio.shape[0], window_s))[None]
        cross = self._encoder.run(None, {"input_features": features})
        prompt, language = self._prompt(cross)
        limit = min(max_new_tokens, self.manifest.max_target_positions - len(prompt))
        limit = min(limit, int(10 + MAX_TOKENS_PER_S * audio.shape[0] / SAMPLE_RATE))
        eos, no_speech = self._tokens.eos, self._tokens.no_speech
        tokens: list[int] = []
        logprob_sum = 0.0
        no_speech_prob = 0.0
        ids: list[int] = prompt
        past: list[np.ndarray] | None = None
        for step in range(limit):
            logits, *past = self._decoder.run(None, self._feed(ids, past, cross))
            if step == 0 and no_speech is not None:
                first = _log_softmax(logits[0, 0].astype(np.float64))  # after <|startoftranscript|>
                no_speech_prob = float(np.exp(first[no_speech]))
            scores = logits[0, -1].astype(np.float64)
            scores[self._suppress] = -np.inf
            if step == 0:
                scores[self._begin_suppress] = -np.inf
            token = int(np.argmax(scores))
            logprob_sum += float(_log_softmax(logits[0, -1].astype(np.float64))[token])
            if token == eos:
                break
            tokens.append(token)
            ids = [token]
        avg_logprob = logprob_sum / max(1, len(tokens) + 1)
        return Decoded(tokens=tokens, avg_logprob=avg_logprob, no_speech_prob=no_speech_prob), language

    def text(self, tokens: list[int]) -> str:
        """Text of content tokens (timestamps and specials dropped)."""
        content = [t for t in tokens if t < self._tokens.eos]
        return self._tokenizer.decode(content, skip_special_tokens=True).strip()

    def transcribe(self, audio: np.ndarray, *, window_s: float | None = None) -> Transcript:
        """Transcript of float32 mono 16 kHz audio of at most 30 s (``window_s``: see ``decode``)."""
        audio = self._audio(audio)
        duration = audio.shape[0] / SAMPLE_RATE
        text, language = "", self.language
        if audio.shape[0]:
            decoded, language = self.decode(audio, window_s=window_s)
            silent = decoded.no_speech_prob > NO_SPEECH_THRESHOLD and decoded.avg_logprob < LOGPROB_THRESHOLD
            if silent:
                log.debug("no speech (p=%.2f, avg logprob %.2f)", decoded.no_speech_prob, decoded.avg_logprob)
            else:
                text = self.text(decoded.tokens)
        segments = [TranscriptSegment(start=0.0, end=round(duration, 3), text=text)] if text else []
        return Transcript(
            text=text, model_id=self.model_id, language=language, segments=segments, produced_at=time.time()
        )
