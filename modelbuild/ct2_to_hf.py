"""Convert a CTranslate2 Whisper model back into a Hugging Face checkpoint directory.

The mapping is the inverse of ``ctranslate2/converters/transformers.py`` (``WhisperLoader``):
fused self-attention q/k/v are split (Whisper's ``k_proj`` has no bias; the stored one is zeros),
cross-attention stores q alone and k/v fused, ``decoder/projection/weight`` is an alias of the
token embeddings (tied in HF). The result loads offline with
``WhisperForConditionalGeneration.from_pretrained(dir)`` and ``WhisperProcessor.from_pretrained(dir)``.
Only numpy, safetensors and json are used; torch and transformers are not needed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from modelbuild import ct2_reader
from modelbuild.sources import Ct2Source

log = logging.getLogger(__name__)

HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
_LANGUAGE = re.compile(r"^<\|[a-z]{2,3}\|>$")
_TIMESTAMP = re.compile(r"^<\|\d+\.\d\d\|>$")


class ConversionError(ValueError):
    """The CTranslate2 model is not a Whisper model this converter understands."""


def _count_layers(model: ct2_reader.Ct2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    found = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    return max(found) + 1 if found else 0


def _split_rows(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(array, parts, axis=0))


def _attention(
    model: ct2_reader.Ct2Model, src: str, dst: str, fused_qkv: bool, out: dict[str, np.ndarray]
) -> None:
    if fused_qkv:
        qw, kw, vw = _split_rows(model.get(f"{src}/linear_0/weight"), 3)
        qb, kb, vb = _split_rows(model.get(f"{src}/linear_0/bias"), 3)
        out_index = 1
    else:
        qw, qb = model.get(f"{src}/linear_0/weight"), model.get(f"{src}/linear_0/bias")
        kw, vw = _split_rows(model.get(f"{src}/linear_1/weight"), 2)
        kb, vb = _split_rows(model.get(f"{src}/linear_1/bias"), 2)
        out_index = 2
    if np.any(kb):
        raise ConversionError(f"{src}: Whisper's k_proj has no bias but the stored one is not zero")
    out[f"{dst}.q_proj.weight"], out[f"{dst}.q_proj.bias"] = qw, qb
    out[f"{dst}.k_proj.weight"] = kw
    out[f"{dst}.v_proj.weight"], out[f"{dst}.v_proj.bias"] = vw, vb
    out[f"{dst}.out_proj.weight"] = model.get(f"{src}/linear_{out_index}/weight")
    out[f"{dst}.out_proj.bias"] = model.get(f"{src}/linear_{out_index}/bias")


def _layer_norm(model: ct2_reader.Ct2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = model.get(f"{src}/gamma")
    out[f"{dst}.bias"] = model.get(f"{src}/beta")


def _ffn(model: ct2_reader.Ct2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    for index, name in ((0, "fc1"), (1, "fc2")):
        out[f"{dst}.{name}.weight"] = model.get(f"{src}/linear_{index}/weight")
        out[f"{dst}.{name}.bias"] = model.get(f"{src}/linear_{index}/bias")
    _layer_norm(model, f"{src}/layer_norm", f"{dst}.final_layer_norm", out)


def state_dict(model: ct2_reader.Ct2Model) -> dict[str, np.ndarray]:
    """HF ``WhisperForConditionalGeneration`` tensors (without the tied ``proj_out``)."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"not a Whisper model: spec {model.spec!r}")
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        out[f"model.encoder.{conv}.weight"] = model.get(f"encoder/{conv}/weight")
        out[f"model.encoder.{conv}.bias"] = model.get(f"encoder/{conv}/bias")
    out["model.encoder.embed_positions.weight"] = model.get("encoder/position_encodings/encodings")
    for i in range(_count_layers(model, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(model, f"{src}/self_attention", f"{dst}.self_attn", True, out)
        _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _ffn(model, f"{src}/ffn", dst, out)
    _layer_norm(model, "encoder/layer_norm", "model.encoder.layer_norm", out)

    out["model.decoder.embed_tokens.weight"] = model.get("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = model.get("decoder/position_encodings/encodings")
    for i in range(_count_layers(model, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(model, f"{src}/self_attention", f"{dst}.self_attn", True, out)
        _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _attention(model, f"{src}/attention", f"{dst}.encoder_attn", False, out)
        _layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
        _ffn(model, f"{src}/ffn", dst, out)
    _layer_norm(model, "decoder/layer_norm", "model.decoder.layer_norm", out)

    projection = model.aliases.get("decoder/projection/weight")
    if projection not in (None, "decoder/embeddings/weight"):
        raise ConversionError("decoder/projection/weight is not tied to the embeddings")
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def read_vocabulary(path: Path) -> list[str]:
    """Tokens of ``vocabulary.txt``, one per line, index = token id."""
    tokens = path.read_text(encoding="utf-8").split("\n")
    while tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def special_ids(vocabulary: list[str]) -> dict[str, object]:
    """Whisper's special token ids, languages and task tokens, read from the vocabulary."""
    index = {token: i for i, token in enumerate(vocabulary)}

    def need(token: str) -> int:
        if token not in index:
            raise ConversionError(f"vocabulary lacks {token}")
        return index[token]

    sot = need("<|startoftranscript|>")
    translate = need("<|translate|>")
    languages = {tok: i for tok, i in index.items() if sot < i < translate and _LANGUAGE.match(tok)}
    timestamps = [i for tok, i in index.items() if _TIMESTAMP.match(tok)]
    if not timestamps:
        raise ConversionError("vocabulary has no timestamp tokens <|0.00|>..<|30.00|>")
    return {
        "eos": need("<|endoftext|>"),
        "sot": sot,
        "translate": translate,
        "transcribe": need("<|transcribe|>"),
        "sot_prev": need("<|startofprev|>"),
        "sot_lm": need("<|startoflm|>"),
        "no_speech": index.get("<|nospeech|>", index.get("<|nocaptions|>")),
        "no_timestamps": need("<|notimestamps|>"),
        "timestamp_begin": min(timestamps),
        "languages": languages,
    }


def hf_config(model: ct2_reader.Ct2Model, ids: dict, ct2_config: dict) -> dict:
    """``config.json`` of the HF checkpoint, from the shapes of the stored variables."""
    vocab_size, d_model = model.get("decoder/embeddings/weight").shape
    ffn_dim = model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    dec_ffn_dim = model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": int(vocab_size),
        "num_mel_bins": int(model.get("encoder/conv1/weight").shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _count_layers(model, "encoder"),
        "decoder_layers": _count_layers(model, "decoder"),
        "encoder_attention_heads": int(model.scalar("encoder/num_heads")),
        "decoder_attention_heads": int(model.scalar("decoder/num_heads")),
        "encoder_ffn_dim": int(ffn_dim),
        "decoder_ffn_dim": int(dec_ffn_dim),
        "max_source_positions": int(model.get("encoder/position_encodings/encodings").shape[0]),
        "max_target_positions": int(model.get("decoder/position_encodings/encodings").shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "is_encoder_decoder": True,
        "bos_token_id": ids["eos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
        "decoder_start_token_id": ids["sot"],
        "median_filter_width": 7,
        # Weights are stored as the source has them (fp16); load them as float32 on CPU.
        "dtype": "float32",
    }


def generation_config(config: dict, ids: dict, ct2_config: dict) -> dict:
    """``generation_config.json`` as the hub ships it for Whisper."""
    multilingual = config["vocab_size"] >= 51865
    generation = {
        "alignment_heads": ct2_config.get("alignment_heads")
        or [[layer, head] for layer in range(config["decoder_layers"] // 2, config["decoder_layers"])
            for head in range(config["decoder_attention_heads"])],
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [220, ids["eos"]])),
        "bos_token_id": ids["eos"],
        "decoder_start_token_id": ids["sot"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": config["max_target_positions"],
        "no_timestamps_token_id": ids["no_timestamps"],
        "prev_sot_token_id": ids["sot_prev"],
        "return_timestamps": False,
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
    }
    if multilingual:
        generation["lang_to_id"] = dict(ids["languages"])
        generation["task_to_id"] = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return generation


def preprocessor_config(n_mels: int) -> dict:
    """``preprocessor_config.json`` for ``WhisperFeatureExtractor``."""
    return {
        "chunk_length": CHUNK_LENGTH,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "hop_length": HOP_LENGTH,
        "n_fft": N_FFT,
        "n_samples": CHUNK_LENGTH * SAMPLE_RATE,
        "nb_max_frames": CHUNK_LENGTH * SAMPLE_RATE // HOP_LENGTH,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }


def tokenizer_json(source_tokenizer: dict, vocabulary: list[str]) -> dict:
    """The source ``tokenizer.json`` with every token of the vocabulary it lacks (timestamps) added."""
    tokenizer = json.loads(json.dumps(source_tokenizer))
    known = set(tokenizer["model"]["vocab"].values()) | {t["id"] for t in tokenizer["added_tokens"]}
    for token_id, token in enumerate(vocabulary):
        if token_id in known:
            continue
        if not _TIMESTAMP.match(token) and not token.startswith("<|"):
            raise ConversionError(f"tokenizer.json lacks the ordinary token {token!r} ({token_id})")
        tokenizer["added_tokens"].append(
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                # Timestamps are not special: WhisperTokenizer finds them after the last special id.
                "special": not _TIMESTAMP.match(token),
            }
        )
    tokenizer["added_tokens"].sort(key=lambda t: t["id"])
    return tokenizer


def tokenizer_config(tokenizer: dict) -> dict:
    """``tokenizer_config.json`` naming the special tokens (timestamps excluded)."""
    specials = [t["content"] for t in tokenizer["added_tokens"] if t["special"]]
    return {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "extra_special_tokens": [t for t in specials if t != "<|endoftext|>"],
    }


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(source: Ct2Source, out_dir: Path) -> Path:
    """Write the HF checkpoint of ``source`` into ``out_dir`` (created); returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s (%s, %.1f MB) to %s", source.name, source.model_parts[0].parent,
             source.size / 1e6, out_dir)
    model = ct2_reader.parse(source.read_model_bin())
    ct2_config = json.loads(source.config.read_text(encoding="utf-8"))
    vocabulary = read_vocabulary(source.vocabulary)
    ids = special_ids(vocabulary)
    config = hf_config(model, ids, ct2_config)
    if len(vocabulary) != config["vocab_size"]:
        raise ConversionError(f"vocabulary has {len(vocabulary)} tokens, embeddings {config['vocab_size']}")
    tokenizer = tokenizer_json(json.loads(source.tokenizer.read_text(encoding="utf-8")), vocabulary)

    save_file(state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config(config, ids, ct2_config))
    _write_json(out_dir / "preprocessor_config.json", preprocessor_config(config["num_mel_bins"]))
    _write_json(out_dir / "tokenizer.json", tokenizer)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(tokenizer))
    return out_dir
