"""The ctranslate2 engine (the worker's default): real tiny.en CTranslate2 weights on the real
sample recording; its settings; its start without its packages."""

from __future__ import annotations

import json
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from cloud.asr import EngineError, TranscriptionEngine, create_engine
from cloud.asr.model_files import HASH_CACHE, weights_hash
from cloud.settings import CLOUD_MODEL, WorkerSettings
from contracts import Transcript
from devtools import SAMPLES_DIR
from devtools.wer import wer
from runtime.plugins import MissingPackage
from runtime.settings import ConfigError

RATE = 16000


def utterances() -> list[tuple[str, np.ndarray]]:
    """(reference, float32 audio) of each utterance of the bundled sample."""
    wav, meta = SAMPLES_DIR / "sample.wav", SAMPLES_DIR / "sample.json"
    if not (wav.is_file() and meta.is_file()):
        pytest.skip(f"sample recording missing in {SAMPLES_DIR}")
    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    spans = json.loads(meta.read_text())["utterances"]
    return [(u["text"], pcm[int(u["start_s"] * RATE) : int(u["end_s"] * RATE)]) for u in spans]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> TranscriptionEngine:
    if not (models_dir / "tiny.en" / "ct2" / "model.bin").is_file():
        pytest.skip("no CTranslate2 tiny.en: run `edgecap models prepare`")
    pytest.importorskip("ctranslate2")
    pytest.importorskip("faster_whisper")
    # the model's root: the engine takes its ct2/ folder; each utterance in its own window (packing
    # shares windows: tests/cloud/test_packing.py, and the packed test below)
    return create_engine(WorkerSettings(model_dir=models_dir / "tiny.en", threads=2, beam_size=1, packing=False))


def check_transcript(t: Transcript, reference: str, seconds: float) -> None:
    assert wer(reference, t.text) <= 0.15, (reference, t.text)
    assert t.language == "en"
    assert re.fullmatch(r"whisper-tiny\.en@ct2-int8:[0-9a-f]{12}", t.model_id), t.model_id
    (segment,) = t.segments
    assert segment.text == t.text and segment.start == 0 and segment.end == pytest.approx(seconds, abs=0.01)
    words = segment.words
    assert "".join(w.word for w in words).strip() == t.text  # the words add up to the text
    assert len(words) >= len(reference.split()) - 2
    for w in words:
        assert 0 <= w.start <= w.end <= seconds + 1e-6, w
        assert w.probability is not None and 0 <= w.probability <= 1
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert words[-1].end > seconds / 2  # the words spread over the audio, not bunched at the start
    assert sum(w.probability or 0 for w in words) / len(words) > 0.6
    q = t.quality
    assert q is not None
    assert -1.0 < q.avg_logprob < 0, q  # a confident decode: Whisper's fallback threshold is -1
    assert 0 <= q.no_speech_prob < 0.3, q
    assert 0.5 < q.compression_ratio < 2.4, q  # no repetition


@pytest.mark.models
def test_sample_utterances_with_words_and_quality(engine: TranscriptionEngine) -> None:
    items = utterances()
    out = engine.transcribe_batch([a for _, a in items])
    assert len(out) == len(items)
    for (reference, audio), t in zip(items, out, strict=True):
        check_transcript(t, reference, audio.size / RATE)


@pytest.mark.models
def test_sample_utterances_packed_pass_the_same_checks(models_dir: Path, engine: TranscriptionEngine) -> None:
    packed = create_engine(WorkerSettings(model_dir=models_dir / "tiny.en", threads=2, beam_size=1, packing=True))
    items = utterances()
    out = packed.transcribe_batch([a for _, a in items])
    audio_s = sum(a.size for _, a in items) / RATE
    assert packed.last_windows < len(items)  # they shared windows
    assert packed.last_padding_s == pytest.approx(30 * packed.last_windows - audio_s, abs=0.01)
    engine.transcribe_batch([a for _, a in items])
    assert engine.last_windows == len(items)
    assert engine.last_padding_s == pytest.approx(30 * len(items) - audio_s, abs=0.01)
    for (reference, audio), t in zip(items, out, strict=True):
        check_transcript(t, reference, audio.size / RATE)
    packed.close()


@pytest.mark.models
def test_a_batch_of_several_lengths_equals_one_by_one(engine: TranscriptionEngine) -> None:
    items = utterances()[:3]
    audios = [items[0][1], items[1][1][: RATE // 2], np.zeros(0, np.float32), items[2][1], items[1][1]]
    batched = engine.transcribe_batch(audios)
    alone = [engine.transcribe_batch([a])[0] for a in audios]
    assert batched[2].text == "" and batched[2].segments == [] and batched[2].quality is None  # empty: no text
    for b, a in zip(batched, alone, strict=True):
        assert b.text == a.text
        assert [w.word for s in b.segments for w in s.words] == [w.word for s in a.segments for w in s.words]
        for wb, wa in zip([w for s in b.segments for w in s.words], [w for s in a.segments for w in s.words],
                          strict=True):  # fmt: skip
            assert abs(wb.start - wa.start) <= 0.06 and abs(wb.end - wa.end) <= 0.06
        if b.quality and a.quality:
            assert b.quality.avg_logprob == pytest.approx(a.quality.avg_logprob, abs=0.02)
            assert b.quality.no_speech_prob == pytest.approx(a.quality.no_speech_prob, abs=0.02)


@pytest.mark.models
def test_silence_is_recognised_as_no_speech(engine: TranscriptionEngine) -> None:
    (t,) = engine.transcribe_batch([np.zeros(2 * RATE, np.float32)])
    assert t.quality is not None and t.quality.no_speech_prob > 0.5, t


@pytest.mark.models
def test_the_model_id_names_the_weights(models_dir: Path, tmp_path: Path) -> None:
    bin_ = models_dir / "tiny.en" / "ct2" / "model.bin"
    if not bin_.is_file():
        pytest.skip("no CTranslate2 tiny.en: run `edgecap models prepare`")
    import hashlib

    whole = hashlib.sha256(bin_.read_bytes()).hexdigest()
    assert weights_hash([bin_]) == whole[:12]
    copy = tmp_path / "model.bin"
    copy.write_bytes(b"other weights")
    assert weights_hash([copy]) == hashlib.sha256(b"other weights").hexdigest()[:12]
    assert json.loads((tmp_path / HASH_CACHE).read_text())["sha256"] == hashlib.sha256(b"other weights").hexdigest()
    copy.write_bytes(b"changed weights")  # another size: the cached hash is not reused
    assert weights_hash([copy]) == hashlib.sha256(b"changed weights").hexdigest()[:12]


def test_defaults_the_settings_check_and_the_folder_each_engine_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECAP_MODELS_DIR", str(tmp_path))
    settings = WorkerSettings.load()
    assert settings.engine == "ctranslate2" and settings.compute_type == "auto"
    assert settings.model_dir == tmp_path / CLOUD_MODEL and settings.beam_size >= 1
    monkeypatch.setenv("EDGECAP_WORKER_COMPUTE_TYPE", "int4")
    with pytest.raises(ConfigError, match="compute_type"):
        WorkerSettings.load()
    monkeypatch.delenv("EDGECAP_WORKER_COMPUTE_TYPE")
    monkeypatch.setenv("EDGECAP_WORKER_BEAM_SIZE", "0")
    with pytest.raises(ConfigError, match="beam_size"):
        WorkerSettings.load()
    monkeypatch.delenv("EDGECAP_WORKER_BEAM_SIZE")
    with pytest.raises(EngineError, match=r"no model\.bin in .*nothing or .*nothing/ct2"):
        create_engine(WorkerSettings(model_dir=tmp_path / "nothing"))
    with pytest.raises(EngineError, match=r"no \*\.safetensors in .*nothing or .*nothing/hf"):
        create_engine(WorkerSettings(engine="transformers", model_dir=tmp_path / "nothing"))


@pytest.mark.usefixtures("restore_logging")  # main() configures logging
@pytest.mark.parametrize("package", ["ctranslate2", "faster_whisper"])
def test_a_missing_package_stops_the_start_naming_the_extra(
    package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "m" / "ct2"
    weights.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (weights / name).write_text("{}")
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(MissingPackage, match=rf"'{package}': pip install 'edgecap\[cloud\]'"):
        create_engine(WorkerSettings(model_dir=tmp_path / "m"))

    from cloud.__main__ import main

    monkeypatch.setenv("EDGECAP_WORKER_MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("EDGECAP_WORKER_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    assert main(["transcribe", "--check-config"]) == 0  # the settings are valid: the name is known
    capsys.readouterr()
    assert main(["transcribe"]) == 2
    err = capsys.readouterr().err
    assert f"the ctranslate2 engine needs the Python package '{package}': pip install 'edgecap[cloud]'" in err
    assert "Traceback" not in err
