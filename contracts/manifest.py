"""The model manifest: what ``edgecap models prepare`` knows about an int8 ONNX Whisper and the edge
engine needs besides the graphs (ids, shapes, suppression lists).

A file contract between the model build (:mod:`modelbuild.onnx_export` writes it) and the engines
(:mod:`edge_agent.asr.onnx_whisper` reads it), kept as ``manifest.json`` next to ``encoder.onnx``,
``decoder.onnx`` and ``tokenizer.json``. It is written last, so a folder with a valid manifest whose
listed files have their recorded sizes is a complete model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST = "manifest.json"
FORMAT: Final = "edgecap-whisper-onnx/1"


class ModelNotPrepared(FileNotFoundError):
    """The model folder is missing or incomplete, or its manifest is not valid; the message names the
    file and says how to prepare the model."""


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecialTokens(_Manifest):
    """Ids of Whisper's special tokens in this model's vocabulary (None: the vocabulary lacks it)."""

    eos: int = Field(description="<|endoftext|>: the end of the text; every id above it is special.")
    sot: int = Field(description="<|startoftranscript|>: the first token of every prompt.")
    sot_prev: int | None = Field(None, description="<|startofprev|>: previous text as a prompt.")
    sot_lm: int | None = Field(None, description="<|startoflm|>.")
    no_speech: int | None = Field(None, description="<|nospeech|> (or <|nocaptions|>): its probability says silence.")
    no_timestamps: int = Field(description="<|notimestamps|>: decode text without timestamps.")
    transcribe: int = Field(description="<|transcribe|>: the task token of multilingual models.")
    translate: int | None = Field(None, description="<|translate|>.")
    timestamp_begin: int = Field(description="<|0.00|>: the first timestamp token.")


class ModelManifest(_Manifest):
    """One prepared int8 ONNX Whisper model (``manifest.json``)."""

    model_id: str = Field(description="The name written into transcripts, e.g. whisper-tiny.en-int8-onnx.")
    name: str = Field(description="The model's name under the models folder, e.g. tiny.en.")
    format: Literal["edgecap-whisper-onnx/1"] = Field(FORMAT, description="This layout and its version.")
    multilingual: bool = Field(description="Whether the model knows languages besides English.")
    n_mels: int = Field(description="Mel bins of the encoder's input features.")
    n_frames: int = Field(3000, description="Feature frames of a full 30 s window.")
    sample_rate: int = Field(16000, description="Audio sample rate the features are computed at.")
    n_fft: int = Field(400, description="FFT length of the features.")
    hop_length: int = Field(160, description="Samples between two feature frames.")
    vocab_size: int = Field(description="Tokens in the vocabulary (the decoder's logits).")
    decoder_layers: int = Field(description="Decoder layers: one past and one cross key/value pair each.")
    decoder_heads: int = Field(description="Attention heads of each decoder layer.")
    d_model: int = Field(description="Width of the hidden states.")
    max_target_positions: int = Field(description="Most tokens the decoder takes, prompt included.")
    tokens: SpecialTokens = Field(description="Ids of the special tokens.")
    languages: dict[str, int] = Field(default_factory=dict, description="Language code → its token id.")
    suppress_tokens: list[int] = Field(default_factory=list, description="Never generated.")
    begin_suppress_tokens: list[int] = Field(default_factory=list, description="Not generated first.")
    files: dict[str, int] = Field(description="The model's other files and their sizes in bytes.")

    @classmethod
    def load(cls, path: Path) -> Self:
        """The manifest in ``path``; :class:`ModelNotPrepared` naming the file when it is missing or invalid."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise ModelNotPrepared(f"{path} is missing: run `edgecap models prepare`") from exc
        except OSError as exc:
            raise ModelNotPrepared(f"cannot read {path}: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'JSON'}: {e['msg']}" for e in exc.errors())
            raise ModelNotPrepared(
                f"{path} is not a valid model manifest ({problems}): run `edgecap models prepare`"
            ) from exc

    def write(self, path: Path) -> None:
        """Write as indented JSON (the model build writes it last)."""
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
