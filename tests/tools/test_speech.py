"""Speech with known transcripts: real piper and espeak-ng, exact timings, noise at a given SNR; WER."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from devtools.speech import (
    SAMPLE_SENTENCES,
    SAMPLES_DIR,
    Recording,
    SpeechEngineMissing,
    sample_recording,
    speech_power,
    synthesize,
)
from devtools.wer import normalize, wer

sf = pytest.importorskip("soundfile")

TEXTS = [
    "The little dog ran across the green field.",
    "Could you please close the door behind you?",
    "We will meet again at the station tonight.",
]


def _read(path: Path) -> tuple[np.ndarray, int, int]:
    info = sf.info(str(path))
    audio, rate = sf.read(str(path), dtype="float64")
    return audio, rate, info.channels


@pytest.fixture(scope="module", params=["piper", "espeak"])
def recording(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    out = tmp_path_factory.mktemp("speech") / f"{request.param}.wav"
    return synthesize(TEXTS, out, voice=request.param, gap_s=(0.7, 1.0), seed=3)


def test_format_is_16k_mono_pcm16(recording: Recording) -> None:
    info = sf.info(str(recording.path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert recording.sample_rate == 16000


def test_timings_ordered_inside_file_and_match_text(recording: Recording) -> None:
    audio, rate, _ = _read(recording.path)
    duration = len(audio) / rate
    utts = recording.utterances
    assert [u.text for u in utts] == TEXTS
    assert recording.text == " ".join(TEXTS)
    assert utts[0].start_s == pytest.approx(0.5)  # lead_s
    for u in utts:
        assert 0 <= u.start_s < u.end_s <= duration
        assert u.end_s - u.start_s > 1.0  # a whole sentence, not a blip
    for a, b in zip(utts, utts[1:], strict=False):
        assert 0.7 - 1e-3 <= b.start_s - a.end_s <= 1.0 + 1e-3  # the requested gap


def test_speech_lies_in_the_utterance_spans(recording: Recording) -> None:
    audio, rate, _ = _read(recording.path)
    inside = np.zeros(len(audio), bool)
    for u in recording.utterances:
        span = audio[round(u.start_s * rate) : round(u.end_s * rate)]
        inside[round(u.start_s * rate) : round(u.end_s * rate)] = True
        # Trimmed: the first and last 20 ms of each span already carry sound.
        edge = int(0.02 * rate)
        assert np.abs(span[:edge]).max() > 0.003 and np.abs(span[-edge:]).max() > 0.003
    speech, gaps = np.mean(audio[inside] ** 2), np.mean(audio[~inside] ** 2)
    assert speech > 1e-3
    assert speech > 1e4 * gaps


def test_reference_round_trip(recording: Recording, tmp_path: Path) -> None:
    ref = recording.path.with_suffix(".json")
    recording.save_reference(ref)
    loaded = Recording.load(ref)
    assert loaded.path.resolve() == recording.path.resolve()
    assert loaded.utterances == recording.utterances
    assert loaded.voice == recording.voice


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_noise_is_mixed_at_the_requested_snr(noise: str, tmp_path: Path) -> None:
    texts = TEXTS[:2]
    clean = synthesize(texts, tmp_path / "clean.wav", seed=5)
    noisy = synthesize(texts, tmp_path / "noisy.wav", seed=5, snr_db=10.0, noise=noise)  # type: ignore[arg-type]
    assert noisy.utterances == clean.utterances  # same seed, same gaps, deterministic piper
    c, _, _ = _read(clean.path)
    m, _, _ = _read(noisy.path)
    scale = float(np.dot(m, c) / np.dot(c, c))  # the mix may be scaled down to avoid clipping
    added = m - scale * c
    measured = 10 * math.log10(speech_power(scale * c, clean.utterances) / float(np.mean(added**2)))
    assert measured == pytest.approx(10.0, abs=0.5)
    assert np.abs(m).max() <= 1.0


def test_same_arguments_give_the_same_samples(tmp_path: Path) -> None:
    a = synthesize(TEXTS[:1], tmp_path / "a.wav", seed=1, snr_db=20)
    b = synthesize(TEXTS[:1], tmp_path / "b.wav", seed=1, snr_db=20)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_cli_writes_wav_json_and_txt(tmp_path: Path) -> None:
    from devtools.speech import main

    out = tmp_path / "cli.wav"
    assert main(["--out", str(out), "--voice", "espeak", "--snr-db", "15", *TEXTS[:2]]) == 0
    rec = Recording.load(out.with_suffix(".json"))
    assert rec.snr_db == 15 and rec.voice == "espeak" and len(rec.utterances) == 2
    assert out.with_suffix(".txt").read_text().strip() == " ".join(TEXTS[:2])


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on this PATH
    with pytest.raises(SpeechEngineMissing, match="espeak-ng"):
        synthesize(TEXTS[:1], tmp_path / "x.wav", voice="espeak")


@pytest.mark.parametrize(
    "kwargs",
    [{"voice": "festival"}, {"gap_s": (1.0, 0.5)}, {"lead_s": -1}, {"noise": "brown", "snr_db": 5}],
)
def test_bad_arguments_are_refused(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize(TEXTS[:1], tmp_path / "x.wav", **kwargs)


def test_bundled_sample() -> None:
    wav = SAMPLES_DIR / "sample.wav"
    assert wav.stat().st_size < 1_000_000
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration <= 28.0
    rec = sample_recording()
    assert rec.path.resolve() == wav.resolve()
    assert 5 <= len(rec.utterances) <= 6
    assert [u.text for u in rec.utterances] == SAMPLE_SENTENCES
    txt = (SAMPLES_DIR / "sample.txt").read_text(encoding="utf-8")
    assert txt.count("\n") == 1 and txt.strip() == rec.text
    assert json.loads((SAMPLES_DIR / "sample.json").read_text())["text"] == rec.text
    assert not any(ch.isdigit() for ch in rec.text)
    for a, b in zip(rec.utterances, rec.utterances[1:], strict=False):
        assert 0.8 - 1e-3 <= b.start_s - a.end_s <= 1.2 + 1e-3
    assert rec.utterances[-1].end_s < info.duration


# --- WER ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  Don't   STOP\tnow...  ", "don't stop now"),
        ("It\u2019s the dog\u2019s bone.", "it's the dog's bone"),
        ("'Quoted' words, (and) more-or-less: fine?", "quoted words and more or less fine"),
        ("", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0.0),
        ("The cat sat on the mat.", "the CAT, sat on the mat", 0.0),  # case and punctuation ignored
        ("the cat sat on the mat", "the cat sit on the mat", 1 / 6),  # one substitution
        ("the cat sat on the mat", "the cat on the mat", 1 / 6),  # one deletion
        ("the cat sat on the mat", "the black cat sat on the mat", 1 / 6),  # one insertion
        ("don't go", "dont go", 1 / 2),  # apostrophes inside words are kept
        ("Don\u2019t go!", "don't go", 0.0),  # curly and straight apostrophes agree
        ("one two", "three four five six", 2.0),  # more errors than reference words
        ("one two", "", 1.0),
        ("", "", 0.0),
    ],
)
def test_wer_exact_values(reference: str, hypothesis: str, expected: float) -> None:
    assert wer(reference, hypothesis) == pytest.approx(expected)


def test_wer_of_empty_reference_with_words_is_infinite() -> None:
    assert wer("", "some words") == math.inf
