"""Export a Hugging Face Whisper checkpoint to two ONNX graphs, verified against PyTorch.

- ``encoder.onnx``: ``input_features`` (batch, n_mels, 3000) -> ``cross_k_<i>``, ``cross_v_<i>``
  (batch, heads, 1500, head_dim) for each decoder layer i: its cross-attention keys and values,
  computed once per audio window.
- ``decoder.onnx``: ``input_ids`` (batch, tokens), ``past_k_<i>``/``past_v_<i>`` (batch, heads,
  past, head_dim; ``past`` may be 0), ``cross_k_<i>``/``cross_v_<i>`` -> ``logits`` (batch, tokens,
  vocab), ``present_k_<i>``/``present_v_<i>`` (past + tokens). One graph serves the first step
  (empty past) and every later step, so it is the merged decoder. Tensors are per layer, not
  stacked: stacking would copy the whole cross-attention cache at every step.

Plain ``torch.onnx.export`` (TorchScript, ``dynamo=False``); works with any checkpoint size,
including large-v3 from a local directory. Then :mod:`modelbuild.quantize` makes them int8.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from contracts.manifest import MANIFEST, ModelManifest, SpecialTokens
from modelbuild import quantize

log = logging.getLogger(__name__)

OPSET = 17
N_FRAMES = 3000
# Maximum abs difference between ONNX fp32 and PyTorch fp32 accepted at export time.
EXPORT_TOLERANCE = 1e-3


def _torch_modules(model):  # type: ignore[no-untyped-def]
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    n_layers = model.config.decoder_layers

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.model.encoder
            self.layers = model.model.decoder.layers
            self.heads = model.config.decoder_attention_heads

        def forward(self, input_features):  # type: ignore[no-untyped-def]
            hidden = self.encoder(input_features).last_hidden_state
            batch, frames, width = hidden.shape
            shape = (batch, frames, self.heads, width // self.heads)
            outputs = []
            for layer in self.layers:
                attn = layer.encoder_attn
                outputs.append(attn.k_proj(hidden).view(shape).transpose(1, 2))
                outputs.append(attn.v_proj(hidden).view(shape).transpose(1, 2))
            return tuple(outputs)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = model.model.decoder
            self.proj_out = model.proj_out

        def forward(self, input_ids, *kv):  # type: ignore[no-untyped-def]
            # kv: past_k_0, past_v_0, ..., then cross_k_0, cross_v_0, ...
            past, cross = kv[: 2 * n_layers], kv[2 * n_layers :]
            cache = EncoderDecoderCache(
                DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n_layers)]),
                DynamicCache([(cross[2 * i], cross[2 * i + 1]) for i in range(n_layers)]),
            )
            # encoder_hidden_states must not be None or the layers skip cross-attention; its values
            # are unused because the cross cache is already filled.
            out = self.decoder(
                input_ids=input_ids, encoder_hidden_states=cross[0], past_key_values=cache, use_cache=True
            )
            outputs = [self.proj_out(out.last_hidden_state)]
            for layer in cache.self_attention_cache.layers:
                outputs += [layer.keys, layer.values]
            return tuple(outputs)

    return Encoder().eval(), Decoder().eval()


def load_model(hf_dir: Path):  # type: ignore[no-untyped-def]
    """The checkpoint in float32 with eager attention (what the export traces)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()


def kv_names(prefix: str, n_layers: int) -> list[str]:
    """``<prefix>_k_0, <prefix>_v_0, <prefix>_k_1, ...`` (prefix: past, present or cross)."""
    return [f"{prefix}_{kind}_{i}" for i in range(n_layers) for kind in ("k", "v")]


def _example_features(n_mels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, n_mels, N_FRAMES)) * 0.5).astype(np.float32)


def export_fp32(model, out_dir: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Write ``encoder.onnx`` and ``decoder.onnx`` (fp32) into ``out_dir``."""
    import torch

    encoder, decoder = _torch_modules(model)
    config = model.config
    layers, heads, width = config.decoder_layers, config.decoder_attention_heads, config.d_model
    features = torch.from_numpy(_example_features(config.num_mel_bins))
    encoder_path, decoder_path = out_dir / "encoder.onnx", out_dir / "decoder.onnx"
    cross, past, present = kv_names("cross", layers), kv_names("past", layers), kv_names("present", layers)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, (features,), str(encoder_path), dynamo=False, opset_version=OPSET,
            input_names=["input_features"], output_names=cross,
            dynamic_axes={"input_features": {0: "batch"}} | {n: {0: "batch"} for n in cross},
        )
        cross_kv = encoder(features)
        # Trace with a non-empty past and more than one new token so neither is baked in.
        past_kv = [torch.zeros((1, heads, 3, width // heads)) for _ in past]
        ids = torch.tensor([[config.decoder_start_token_id, 50, 51]])
        torch.onnx.export(
            decoder, (ids, *past_kv, *cross_kv), str(decoder_path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", *past, *cross], output_names=["logits", *present],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}}
            | {n: {0: "batch", 2: "past"} for n in past}
            | {n: {0: "batch", 2: "frames"} for n in cross}
            | {n: {0: "batch", 2: "total"} for n in present},
        )
    return encoder_path, decoder_path


def _session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify(model, encoder_path: Path, decoder_path: Path, tolerance: float = EXPORT_TOLERANCE) -> float:  # type: ignore[no-untyped-def]
    """Compare ONNX with PyTorch for an empty and a non-empty past; returns the largest difference."""
    import torch

    encoder, decoder = _torch_modules(model)
    config = model.config
    layers, heads, width = config.decoder_layers, config.decoder_attention_heads, config.d_model
    features = _example_features(config.num_mel_bins, seed=1)
    enc, dec = _session(encoder_path), _session(decoder_path)
    cross = enc.run(None, {"input_features": features})
    with torch.no_grad():
        ref_cross = [t.numpy() for t in encoder(torch.from_numpy(features))]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(cross, ref_cross, strict=True))
    past = [np.zeros((1, heads, 0, width // heads), np.float32) for _ in range(2 * layers)]
    names = ["input_ids", *kv_names("past", layers), *kv_names("cross", layers)]
    prompt = [config.decoder_start_token_id, 1770, 13, 383]
    for ids in (prompt, [290], [11, 262]):  # empty past, then one and two new tokens
        inputs = [np.array([ids], np.int64), *past, *cross]
        outputs = dec.run(None, dict(zip(names, inputs, strict=True)))
        with torch.no_grad():
            ref = [t.numpy() for t in decoder(*(torch.from_numpy(x) for x in inputs))]
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(outputs, ref, strict=True)))
        if outputs[1].shape[2] != past[0].shape[2] + len(ids):
            raise RuntimeError(f"decoder present length {outputs[1].shape[2]} is wrong")
        past = outputs[1:]
    log.info("ONNX fp32 vs PyTorch: max abs diff %.2e", worst)
    if worst > tolerance:
        raise RuntimeError(f"exported ONNX differs from PyTorch by {worst:.2e} (> {tolerance:.0e})")
    return worst


def _tokenizer_json(hf_dir: Path, out: Path) -> None:
    source = hf_dir / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, out)
        return
    from transformers import AutoTokenizer  # a checkpoint with only vocab.json + merges.txt

    AutoTokenizer.from_pretrained(hf_dir, local_files_only=True).backend_tokenizer.save(str(out))


def manifest(model, name: str, tokenizer_path: Path, files: dict[str, int]) -> ModelManifest:  # type: ignore[no-untyped-def]
    """What the edge runtime needs to know besides the graphs (ids, shapes, suppression lists);
    ``files`` are the other files with their sizes."""
    from tokenizers import Tokenizer

    config, generation = model.config, model.generation_config
    tokenizer = Tokenizer.from_file(str(tokenizer_path))

    def token(text: str) -> int | None:
        return tokenizer.token_to_id(text)

    timestamp_begin = token("<|0.00|>")
    if timestamp_begin is None:
        raise RuntimeError(f"{tokenizer_path} lacks the timestamp tokens <|0.00|>..<|30.00|>")
    multilingual = bool(getattr(generation, "is_multilingual", config.vocab_size >= 51865))
    languages = dict(getattr(generation, "lang_to_id", None) or {}) if multilingual else {}
    tokens = SpecialTokens(
        eos=token("<|endoftext|>"), sot=token("<|startoftranscript|>"), sot_prev=token("<|startofprev|>"),
        sot_lm=token("<|startoflm|>"), no_speech=token("<|nospeech|>") or token("<|nocaptions|>"),
        no_timestamps=token("<|notimestamps|>"), transcribe=token("<|transcribe|>"),
        translate=token("<|translate|>"), timestamp_begin=timestamp_begin,
    )
    return ModelManifest(
        model_id=f"whisper-{name}-int8-onnx", name=name, multilingual=multilingual, files=files,
        n_mels=config.num_mel_bins, n_frames=N_FRAMES, vocab_size=config.vocab_size, d_model=config.d_model,
        decoder_layers=config.decoder_layers, decoder_heads=config.decoder_attention_heads,
        max_target_positions=config.max_target_positions, tokens=tokens,
        languages={k.strip("<|>"): v for k, v in languages.items()},
        suppress_tokens=[int(t) for t in (generation.suppress_tokens or [])],
        begin_suppress_tokens=[int(t) for t in (generation.begin_suppress_tokens or [])],
    )


def export_int8(hf_dir: Path, out_dir: Path, *, name: str) -> Path:
    """Export, verify and quantize ``hf_dir`` into ``out_dir``; the manifest is written last."""
    model = load_model(hf_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecap-onnx-", dir=out_dir) as work:
        fp32_encoder, fp32_decoder = export_fp32(model, Path(work))
        verify(model, fp32_encoder, fp32_decoder)
        quantize.encoder(fp32_encoder, out_dir / "encoder.onnx")
        quantize.decoder(fp32_decoder, out_dir / "decoder.onnx")
    _tokenizer_json(hf_dir, out_dir / "tokenizer.json")
    files = {f: (out_dir / f).stat().st_size for f in ("encoder.onnx", "decoder.onnx", "tokenizer.json")}
    manifest(model, name, out_dir / "tokenizer.json", files).write(out_dir / MANIFEST)
    log.info("int8 ONNX: %s", ", ".join(f"{f} {s / 1e6:.1f} MB" for f, s in files.items()))
    return out_dir
