"""The VAD segmenters (webrtcvad, Silero) on real and synthetic audio: one segment per utterance, no
clipped onsets, cuts at the maximum length, pauses for early drafts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.speech import SAMPLE_SENTENCES, Recording, sample_recording, synthesize
from edge_agent.vad import (
    ENGINES,
    Pause,
    Segmenter,
    SileroSegmenter,
    SpeechSegment,
    VadEvent,
    VadModelMissing,
    VadTiming,
    WebrtcSegmenter,
    create_segmenter,
)

sf = pytest.importorskip("soundfile")

RATE = 16000
T0 = 1_700_000_000.0  # a realistic capture clock: times are absolute, not file offsets


def _pcm(rec: Recording) -> bytes:
    audio, rate = sf.read(str(rec.path), dtype="int16")
    assert rate == RATE
    return audio.tobytes()


def _segment(pcm: bytes, vad: Segmenter, t0: float = T0) -> list[SpeechSegment]:
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
    vad = WebrtcSegmenter()
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
    _assert_one_segment_per_utterance(_segment(_pcm(rec), WebrtcSegmenter()), rec)


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_noisy_recording_does_not_merge_sentences(noise: str, tmp_path: Path) -> None:
    rec = synthesize(SAMPLE_SENTENCES[1:5], tmp_path / "noisy.wav", gap_s=(0.9, 1.3), seed=7, snr_db=10.0, noise=noise)  # type: ignore[arg-type]
    segments = _segment(_pcm(rec), WebrtcSegmenter(aggressiveness=3))
    _assert_one_segment_per_utterance(segments, rec)


def test_long_utterance_is_cut_and_nothing_is_lost(tmp_path: Path) -> None:
    texts = SAMPLE_SENTENCES * 2  # ~40 s of speech with pauses shorter than the hangover
    rec = synthesize(texts, tmp_path / "long.wav", gap_s=0.15, seed=1, lead_s=0.3)
    pcm = _pcm(rec)
    speech_s = rec.utterances[-1].end_s - rec.utterances[0].start_s
    assert speech_s > 38
    vad = WebrtcSegmenter(timing=VadTiming(max_segment_s=28.0))
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
    whole = _segment(pcm, WebrtcSegmenter())
    rng = np.random.default_rng(11)
    vad = WebrtcSegmenter()
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
    vad = WebrtcSegmenter(timing=VadTiming(min_speech_ms=250))
    assert _segment(silence + burst + silence, vad) == []
    assert vad.dropped_short == 1


def test_time_jump_moves_the_clock() -> None:
    rec = sample_recording()
    pcm = _pcm(rec)
    half = (len(pcm) // 4) * 2
    vad = WebrtcSegmenter()
    segments = vad.feed(pcm[:half], T0) + vad.feed(pcm[half:], T0 + 100.0 + half / 2 / RATE) + vad.flush()
    assert len(segments) == len(rec.utterances)
    assert segments[-1].ended_at == pytest.approx(T0 + 100.0 + len(pcm) / 2 / RATE)


@pytest.mark.parametrize("kwargs", [{"sample_rate": 22050}, {"frame_ms": 25}, {"aggressiveness": 4}])
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WebrtcSegmenter(**kwargs)


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"pre_roll_ms": -1}, "pre_roll_ms"),
        ({"hangover_ms": 10, "pause_ms": 0}, "hangover_ms must be at least one frame"),
        ({"hangover_ms": 60}, "below hangover_ms"),
        ({"min_speech_ms": -5}, "min_speech_ms"),
        ({"max_segment_s": 0.5}, "max_segment_s"),
    ],
)
def test_bad_timing_is_refused(timing: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WebrtcSegmenter(timing=VadTiming(**timing))


def test_odd_byte_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        WebrtcSegmenter().feed(b"\x00\x00\x00", T0)


def test_engine_registry_builds_the_configured_engine() -> None:
    """The registry is filled by the engines' own registration, and the settings pick one by name."""
    from edge_agent.settings import VadSettings
    from edge_agent.vad import create_segmenter

    assert ENGINES.names() == ["silero", "webrtc"]
    assert ENGINES.get("webrtc") is WebrtcSegmenter and WebrtcSegmenter.type_key == "webrtc"
    vad = create_segmenter(VadSettings(engine="webrtc", aggressiveness=1, pause_ms=120))
    assert type(vad) is WebrtcSegmenter and vad.timing.pause_ms == 120


# --- pauses: early drafts before the hangover ends --------------------------------------------


class EnergySegmenter(Segmenter):
    """A deterministic engine for synthetic audio: a frame is speech when its RMS exceeds 1000."""

    type_key = "energy"

    def __init__(self, **timing: Any) -> None:
        super().__init__(sample_rate=RATE, frame_samples=480, timing=VadTiming(**timing))

    def _is_speech(self, data: bytes, samples: np.ndarray) -> bool:
        return float(np.sqrt(np.mean(samples**2))) > 1000.0


def _tone(seconds: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def _silence(seconds: float) -> bytes:
    return b"\x00\x00" * round(seconds * RATE)


def _events(vad: Segmenter, pcm: bytes, chunk_ms: int = 30) -> list[tuple[float, VadEvent]]:
    """Feed like a capture thread: (time the chunk was complete, event) for every event."""
    out: list[tuple[float, VadEvent]] = []
    step = RATE * chunk_ms // 1000 * 2
    for pos in range(0, len(pcm), step):
        chunk = pcm[pos : pos + step]
        done = T0 + (pos + len(chunk)) / 2 / RATE
        out += [(done, e) for e in vad.process(chunk, T0 + pos / 2 / RATE)]
    return out + [(T0 + len(pcm) / 2 / RATE, e) for e in vad.flush()]


def test_pause_comes_pause_ms_after_speech_and_the_segment_after_the_hangover() -> None:
    pcm = _silence(0.5) + _tone(1.0) + _silence(1.0)
    events = _events(EnergySegmenter(pause_ms=150, hangover_ms=600, pre_roll_ms=300), pcm)
    assert [type(e) for _, e in events] == [Pause, SpeechSegment]
    (paused_at, pause), (closed_at, segment) = events
    assert isinstance(pause, Pause) and isinstance(segment, SpeechSegment)
    speech_end = T0 + 1.5
    assert paused_at == pytest.approx(speech_end + 0.15, abs=0.001)
    # the hangover window (20 frames) may hold 10 % voiced frames: it closes after 18 silent ones
    assert closed_at == pytest.approx(speech_end + 0.54, abs=0.001)
    assert pause.segment.segment_id == segment.segment_id
    assert pause.segment.revision == segment.revision == 0  # only silence came after the pause
    assert segment.pcm.startswith(pause.segment.pcm)
    assert pause.segment.started_at == segment.started_at == pytest.approx(T0 + 0.2)


def test_speech_resuming_after_a_pause_raises_the_revision() -> None:
    pcm = _silence(0.5) + _tone(1.0) + _silence(0.3) + _tone(0.6) + _silence(1.0)
    vad = EnergySegmenter(pause_ms=150, hangover_ms=600)
    events = [e for _, e in _events(vad, pcm)]
    assert [type(e) for e in events] == [Pause, Pause, SpeechSegment]
    first, second, segment = events
    assert isinstance(first, Pause) and isinstance(second, Pause) and isinstance(segment, SpeechSegment)
    assert first.segment.segment_id == second.segment.segment_id == segment.segment_id
    assert (first.segment.revision, second.segment.revision, segment.revision) == (0, 1, 1)
    assert first.segment.ended_at == pytest.approx(T0 + 1.65)
    assert second.segment.ended_at == pytest.approx(T0 + 2.55)
    assert vad.pauses == 2 and vad.segments_emitted == 1


def test_a_stray_voiced_frame_after_a_pause_is_not_speech_resuming() -> None:
    pcm = _silence(0.5) + _tone(1.0) + _silence(0.3) + _tone(0.03) + _silence(1.0)
    events = [e for _, e in _events(EnergySegmenter(pause_ms=150), pcm)]
    assert [type(e) for e in events] == [Pause, SpeechSegment]
    assert events[0].segment.revision == events[1].revision == 0  # type: ignore[union-attr]


def test_no_pause_for_short_bursts_nor_with_pause_ms_zero() -> None:
    short = _silence(0.5) + _tone(0.12) + _silence(1.0)
    vad = EnergySegmenter(min_speech_ms=250)
    assert _events(vad, short) == [] and vad.dropped_short == 1
    long = _silence(0.5) + _tone(1.0) + _silence(1.0)
    assert [type(e) for _, e in _events(EnergySegmenter(pause_ms=0), long)] == [SpeechSegment]


def test_a_cut_at_max_length_gets_a_new_revision_and_id() -> None:
    pcm = _silence(0.3) + _tone(0.8) + _silence(0.2) + _tone(1.6) + _silence(1.0)
    events = [e for _, e in _events(EnergySegmenter(pause_ms=150, max_segment_s=2.0), pcm)]
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    pauses = [e for e in events if isinstance(e, Pause)]
    assert len(segments) == 2 and pauses
    assert segments[0].segment_id != segments[1].segment_id
    assert pauses[0].segment.segment_id == segments[0].segment_id
    assert segments[0].revision > pauses[0].segment.revision  # never reuse a pause's draft for a cut piece


def test_real_speech_gives_one_pause_per_utterance_before_its_segment() -> None:
    rec = sample_recording()
    events = _events(WebrtcSegmenter(timing=VadTiming(pause_ms=150)), _pcm(rec))
    pauses = [(t, e) for t, e in events if isinstance(e, Pause)]
    segments = [(t, e) for t, e in events if isinstance(e, SpeechSegment)]
    assert len(pauses) == len(segments) == len(rec.utterances)
    for (paused_at, pause), (closed_at, segment), utt in zip(pauses, segments, rec.utterances, strict=True):
        assert isinstance(pause, Pause) and isinstance(segment, SpeechSegment)
        assert pause.segment.segment_id == segment.segment_id and pause.segment.revision == segment.revision
        assert pause.segment.ended_at >= T0 + utt.end_s  # the whole utterance is in the early draft
        assert paused_at - (T0 + utt.end_s) < 0.35  # ...and it comes well before the hangover ends
        if utt is not rec.utterances[-1]:  # the last one is closed by the end of the file
            assert closed_at - paused_at > 0.3


# --- the noisy corpus, both engines, both voices ----------------------------------------------


@pytest.fixture(scope="module")
def silero_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelbuild import silero

    try:
        silero.locate()
    except silero.MissingVadModel as exc:
        pytest.skip(str(exc))
    models = tmp_path_factory.mktemp("models")
    assert silero.prepare(models) is True
    assert silero.prepare(models) is False  # idempotent
    return silero.target(models)


@pytest.fixture(scope="module", params=["piper", "espeak"])
def noisy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    texts = SAMPLE_SENTENCES[:4]
    out = tmp_path_factory.mktemp("noisy") / f"{request.param}.wav"
    return synthesize(texts, out, voice=request.param, gap_s=(0.8, 1.2), seed=5, snr_db=10.0)


@pytest.mark.parametrize("engine", ["webrtc-2", "webrtc-3", "silero"])
def test_noisy_corpus_no_merged_sentences_no_clipped_onsets(engine: str, noisy: Recording, silero_model: Path) -> None:
    vad: Segmenter
    if engine == "silero":
        vad = SileroSegmenter(model_path=silero_model)
    else:
        vad = WebrtcSegmenter(aggressiveness=int(engine[-1]))
    _assert_one_segment_per_utterance(_segment(_pcm(noisy), vad), noisy)


# --- Silero -------------------------------------------------------------------------------------


def test_silero_matches_the_reference_implementation(silero_model: Path) -> None:
    """Window by window with carried state equals faster-whisper's batched Silero run."""
    vad_module = pytest.importorskip("faster_whisper.vad")
    audio = np.frombuffer(_pcm(sample_recording()), dtype="<i2")[: 16000 * 8].astype(np.float32) / 32768.0
    audio = audio[: len(audio) // 512 * 512]
    reference = np.asarray(vad_module.SileroVADModel(str(silero_model))(audio.copy())).reshape(-1)
    vad = SileroSegmenter(model_path=silero_model)
    ours = np.array([vad.probability(audio[i : i + 512]) for i in range(0, len(audio), 512)])
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4
    assert ours.max() > 0.9 and ours[:10].max() < 0.2  # speech is found, the lead silence is not speech


def test_silero_segments_the_sample_like_webrtc(silero_model: Path) -> None:
    rec = sample_recording()
    silero = _segment(_pcm(rec), SileroSegmenter(model_path=silero_model))
    webrtc = _segment(_pcm(rec), WebrtcSegmenter())
    _assert_one_segment_per_utterance(silero, rec)
    for a, b in zip(silero, webrtc, strict=True):
        assert abs(a.started_at - b.started_at) < 0.25 and abs(a.ended_at - b.ended_at) < 0.25
    # chunking does not change Silero's segments either (state and context carried)
    vad = SileroSegmenter(model_path=silero_model)
    pcm = _pcm(rec)
    chunked = [s for pos in range(0, len(pcm), 1234) for s in vad.feed(pcm[pos : pos + 1234], T0 + pos / 2 / RATE)]
    assert chunked + vad.flush() == silero


def test_create_segmenter_from_settings(silero_model: Path, tmp_path: Path) -> None:
    from edge_agent.settings import VadSettings

    webrtc = create_segmenter(VadSettings(aggressiveness=3, pause_ms=120, min_speech_ms=300))
    assert isinstance(webrtc, WebrtcSegmenter) and webrtc.aggressiveness == 3
    assert webrtc.timing == VadTiming(pause_ms=120, min_speech_ms=300)
    silero = create_segmenter(VadSettings(engine="silero", model_path=silero_model, threshold=0.6, hangover_ms=800))
    assert isinstance(silero, SileroSegmenter) and silero.threshold == 0.6
    assert silero.timing == VadTiming(hangover_ms=800)
    with pytest.raises(VadModelMissing, match="edgecap models prepare"):
        create_segmenter(VadSettings(engine="silero", model_path=tmp_path / "nope.onnx"))
    with pytest.raises(ValueError, match="pause_ms"):
        VadSettings(pause_ms=700, hangover_ms=600)
    with pytest.raises(ValueError, match="unknown VAD engine 'webrtcc'; known: silero, webrtc"):
        VadSettings(engine="webrtcc")
    assert ENGINES.get("silero") is SileroSegmenter


def test_timing_defaults_are_the_settings_defaults() -> None:
    from edge_agent.settings import VadSettings

    assert VadTiming.from_settings(VadSettings()) == VadTiming()
    assert WebrtcSegmenter().timing == VadTiming()
