"""The webrtcvad segmenter on real recordings: one segment per utterance, no clipped onsets, cuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.vad import VAD_ENGINES, SpeechSegment, VadSegmenter
from edgecap.speech import SAMPLE_SENTENCES, Recording, sample_recording, synthesize

sf = pytest.importorskip("soundfile")

RATE = 16000
T0 = 1_700_000_000.0  # a realistic capture clock: times are absolute, not file offsets


def _pcm(rec: Recording) -> bytes:
    audio, rate = sf.read(str(rec.path), dtype="int16")
    assert rate == RATE
    return audio.tobytes()


def _segment(pcm: bytes, vad: VadSegmenter, t0: float = T0) -> list[SpeechSegment]:
    return vad.feed(pcm, t0) + vad.flush()


def _assert_one_segment_per_utterance(segments: list[SpeechSegment], rec: Recording) -> None:
    assert len(segments) == len(rec.utterances), [(s.started_at - T0, s.ended_at - T0) for s in segments]
    for seg, utt in zip(segments, rec.utterances, strict=True):
        assert seg.started_at <= T0 + utt.start_s, f"clipped onset of {utt.text!r}"
        assert seg.ended_at >= T0 + utt.end_s, f"clipped end of {utt.text!r}"
        assert seg.ended_at - seg.started_at == pytest.approx(len(seg.pcm) / 2 / RATE)
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.ended_at <= b.started_at  # no audio twice


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    texts = SAMPLE_SENTENCES[1:5]
    return synthesize(texts, tmp_path_factory.mktemp("vad") / "clean.wav", gap_s=(0.9, 1.3), seed=7)


def test_bundled_sample_gives_one_segment_per_utterance() -> None:
    rec = sample_recording()
    vad = VadSegmenter()
    segments = _segment(_pcm(rec), vad)
    _assert_one_segment_per_utterance(segments, rec)
    assert vad.dropped_short == 0 and vad.segments_cut == 0
    # The segment audio is the recording's audio at those times.
    pcm = _pcm(rec)
    for seg in segments:
        start = round((seg.started_at - T0) * RATE) * 2
        assert seg.pcm == pcm[start : start + len(seg.pcm)]


@pytest.mark.parametrize("voice", ["piper", "espeak"])
def test_generated_recording_gives_one_segment_per_utterance(voice: str, generated: Recording, tmp_path: Path) -> None:
    rec = (
        generated
        if voice == "piper"
        else synthesize(SAMPLE_SENTENCES[1:4], tmp_path / "espeak.wav", voice="espeak", gap_s=(0.9, 1.3), seed=7)
    )
    _assert_one_segment_per_utterance(_segment(_pcm(rec), VadSegmenter()), rec)


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_noisy_recording_does_not_merge_sentences(noise: str, tmp_path: Path) -> None:
    rec = synthesize(SAMPLE_SENTENCES[1:5], tmp_path / "noisy.wav", gap_s=(0.9, 1.3), seed=7, snr_db=10.0, noise=noise)  # type: ignore[arg-type]
    segments = _segment(_pcm(rec), VadSegmenter(aggressiveness=3))
    _assert_one_segment_per_utterance(segments, rec)


def test_long_utterance_is_cut_and_nothing_is_lost(tmp_path: Path) -> None:
    texts = SAMPLE_SENTENCES * 2  # ~40 s of speech with pauses shorter than the hangover
    rec = synthesize(texts, tmp_path / "long.wav", gap_s=0.15, seed=1, lead_s=0.3)
    pcm = _pcm(rec)
    speech_s = rec.utterances[-1].end_s - rec.utterances[0].start_s
    assert speech_s > 38
    vad = VadSegmenter(max_segment_s=28.0)
    segments = _segment(pcm, vad)
    assert len(segments) >= 2 and vad.segments_cut >= 1
    for seg in segments:
        assert len(seg.pcm) / 2 / RATE <= 28.0
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.ended_at == pytest.approx(b.started_at)  # contiguous: the cut loses nothing
    start = round((segments[0].started_at - T0) * RATE) * 2
    joined = b"".join(s.pcm for s in segments)
    assert joined == pcm[start : start + len(joined)]
    assert segments[0].started_at <= T0 + rec.utterances[0].start_s
    assert segments[-1].ended_at >= T0 + rec.utterances[-1].end_s
    # Cut at a quiet frame, not in the middle of a loud word.
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    loud = np.mean(audio[round(rec.utterances[0].start_s * RATE) : round(rec.utterances[-1].end_s * RATE)] ** 2)
    for seg in segments[:-1]:
        end = round((seg.ended_at - T0) * RATE)
        assert np.mean(audio[end - 480 : end] ** 2) < 0.05 * loud
        cut_s = seg.ended_at - T0
        assert not any(u.start_s < cut_s < u.end_s for u in rec.utterances), "cut inside a sentence"


def test_random_chunk_sizes_give_identical_segments(generated: Recording) -> None:
    pcm = _pcm(generated)
    whole = _segment(pcm, VadSegmenter())
    rng = np.random.default_rng(11)
    vad = VadSegmenter()
    chunked: list[SpeechSegment] = []
    pos = 0
    while pos < len(pcm):
        size = 2 * int(rng.integers(1, 4000))
        chunked += vad.feed(pcm[pos : pos + size], T0 + pos / 2 / RATE)
        pos += size
    chunked += vad.flush()
    assert chunked == whole
    assert len(whole) == len(generated.utterances)


def test_short_bursts_are_dropped_and_counted(generated: Recording) -> None:
    pcm = _pcm(generated)
    utt = generated.utterances[0]
    start = round((utt.start_s + 0.3) * RATE) * 2
    burst = pcm[start : start + int(0.12 * RATE) * 2]  # 120 ms of real speech
    silence = b"\x00" * RATE * 2
    vad = VadSegmenter(min_speech_ms=250)
    assert _segment(silence + burst + silence, vad) == []
    assert vad.dropped_short == 1


def test_time_jump_moves_the_clock() -> None:
    rec = sample_recording()
    pcm = _pcm(rec)
    half = (len(pcm) // 4) * 2
    vad = VadSegmenter()
    segments = vad.feed(pcm[:half], T0) + vad.feed(pcm[half:], T0 + 100.0 + half / 2 / RATE) + vad.flush()
    assert len(segments) == len(rec.utterances)
    assert segments[-1].ended_at == pytest.approx(T0 + 100.0 + len(pcm) / 2 / RATE)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 22050},
        {"frame_ms": 25},
        {"aggressiveness": 4},
        {"pre_roll_ms": -1},
        {"hangover_ms": 10},
        {"min_speech_ms": -5},
        {"max_segment_s": 0.5},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VadSegmenter(**kwargs)


def test_odd_byte_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        VadSegmenter().feed(b"\x00\x00\x00", T0)


def test_engine_registry() -> None:
    assert VAD_ENGINES["webrtc"] is VadSegmenter
