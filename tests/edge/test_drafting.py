"""Early drafts at pauses: shown at once, reused when only silence followed, replaced when speech resumed.

Real pieces throughout: the int8 ONNX Whisper (a subclass that counts its calls), the webrtc VAD on
the bundled recording, the caption sink and the SQLite outbox.
"""

from __future__ import annotations

import json
import queue
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from contracts import Audio, Segment, Transcript, Up, decode, encode, mqtt_topic
from devtools.speech import sample_recording
from devtools.wer import wer
from edge_agent.asr import OnnxWhisper, SpeechRecognizer
from edge_agent.captions import CaptionSink
from edge_agent.drafting import Drafter
from edge_agent.outbox import Outbox
from edge_agent.vad import Pause, SpeechSegment, VadEvent, VadTiming, WebrtcSegmenter

pytestmark = pytest.mark.models
RATE = 16000
T0 = 1_700_000_000.0


class CountingWhisper(OnnxWhisper):
    """The real engine, counting its transcriptions and the encoder window of each."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.windows: list[float | None] = []

    def transcribe(self, audio: np.ndarray, *, window_s: float | None = None) -> Transcript:
        self.windows.append(window_s)
        return super().transcribe(audio, window_s=window_s)


class FailingWhisper(CountingWhisper):
    """Fails on full-window transcriptions (as a broken model would), not on early drafts."""

    def transcribe(self, audio: np.ndarray, *, window_s: float | None = None) -> Transcript:
        if window_s is None:
            self.windows.append(window_s)
            raise RuntimeError("engine broke")
        return super().transcribe(audio, window_s=window_s)


@pytest.fixture(scope="module")
def whisper(models_dir: Path) -> CountingWhisper:
    engine = CountingWhisper(models_dir / "tiny.en" / "onnx-int8", threads=2)
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def sample_pcm() -> bytes:
    import soundfile as sf

    audio, rate = sf.read(str(sample_recording().path), dtype="int16")
    assert rate == RATE
    return audio.tobytes()


def _utterance(pcm: bytes, index: int, before: float = 0.4, after: float = 1.0) -> bytes:
    utt = sample_recording().utterances[index]
    return pcm[round((utt.start_s - before) * RATE) * 2 : round((utt.end_s + after) * RATE) * 2]


def _vad_events(pcm: bytes) -> list[VadEvent]:
    vad = WebrtcSegmenter(timing=VadTiming(pause_ms=150, hangover_ms=600))
    return vad.process(pcm, T0) + vad.flush()


class Rig:
    """A drafter wired to a real caption sink and a real outbox, as the agent wires it."""

    def __init__(self, tmp_path: Path, asr: SpeechRecognizer, early_window_s: float | None) -> None:
        self.captions = CaptionSink(tmp_path / "captions", terminal=False, write_interval_s=0)
        self.outbox = Outbox(tmp_path / "outbox.sqlite3")
        self.drafter = Drafter(asr, self.captions, self.commit, early_window_s=early_window_s,
                               expected_seq=self.outbox.next_seq)

    def commit(self, speech: SpeechSegment, draft: Transcript | None) -> tuple[int, str]:
        def build(seq: int) -> bytes:
            audio = Audio(sample_rate=RATE, data=speech.pcm)
            return encode(Segment(agent_id="pi", segment_id=speech.segment_id, seq=seq, started_at=speech.started_at,
                                  ended_at=speech.ended_at, audio=audio, draft=draft))

        return self.outbox.append(speech.segment_id, mqtt_topic("pi", Up.SEGMENTS), build), speech.segment_id

    def stored(self) -> list[Segment]:
        return [decode(e.payload, Segment) for e in self.outbox.due(100)]

    def events(self) -> list[dict[str, object]]:
        lines = self.captions.events_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def test_draft_at_a_pause_is_shown_then_reused_without_a_second_inference(
    tmp_path: Path, whisper: CountingWhisper, sample_pcm: bytes
) -> None:
    events = _vad_events(_utterance(sample_pcm, 0))
    assert [type(e) for e in events] == [Pause, SpeechSegment]
    pause, segment = events
    assert isinstance(pause, Pause) and isinstance(segment, SpeechSegment)
    rig = Rig(tmp_path, whisper, early_window_s=None)
    whisper.windows.clear()

    rig.drafter.handle(pause)
    assert whisper.windows == [None]  # one full-window inference, at the pause
    shown = rig.captions.get(segment.segment_id)
    assert shown is not None and wer(sample_recording().utterances[0].text, shown.text) < 0.2
    assert rig.outbox.depth() == 0  # not final yet: nothing committed

    rig.drafter.handle(segment)
    assert whisper.windows == [None]  # only silence was added: the draft is reused
    assert rig.drafter.counters["drafts_reused"] == 1
    [stored] = rig.stored()
    assert stored.segment_id == segment.segment_id and stored.audio.data == segment.pcm
    assert stored.draft is not None and stored.draft.text == shown.text
    assert len(rig.captions) == 1 and rig.captions.get(segment.segment_id).seq == stored.seq  # type: ignore[union-attr]


def test_short_window_draft_at_the_pause_and_a_full_window_one_committed_at_the_end(
    tmp_path: Path, whisper: CountingWhisper, sample_pcm: bytes
) -> None:
    pause, segment = _vad_events(_utterance(sample_pcm, 1))
    assert isinstance(pause, Pause) and isinstance(segment, SpeechSegment)
    rig = Rig(tmp_path, whisper, early_window_s=10.0)
    assert whisper.windowed, "the onnx package patches the encoder for short windows"
    whisper.windows.clear()
    rig.drafter.handle(pause, waiting=deque)
    assert whisper.windows == [10.0]  # fast draft shown first...
    assert rig.captions.get(segment.segment_id) is not None and rig.outbox.depth() == 0
    rig.drafter.handle(segment)
    assert whisper.windows == [10.0, None]  # ...the accurate one is committed
    [stored] = rig.stored()
    assert stored.draft is not None
    assert wer(sample_recording().utterances[1].text, stored.draft.text) < 0.2
    drafts = [e for e in rig.events() if e["event"] == "draft"]
    assert drafts and all(e["segment_id"] == segment.segment_id for e in drafts)
    assert drafts[0]["produced_at"] <= drafts[-1]["produced_at"]  # type: ignore[operator]


def test_speech_resuming_replaces_the_provisional_caption(
    tmp_path: Path, whisper: CountingWhisper, sample_pcm: bytes
) -> None:
    # Two sentences 0.35 s apart: a pause after the first, then speech resumes within the hangover.
    first, second = _utterance(sample_pcm, 2, after=0.0), _utterance(sample_pcm, 3, before=0.0)
    gap = b"\x00\x00" * int(0.35 * RATE)
    events = _vad_events(first + gap + second + b"\x00\x00" * RATE)
    kinds = [type(e) for e in events]
    assert kinds == [Pause, Pause, SpeechSegment], kinds
    segment = events[-1]
    assert isinstance(segment, SpeechSegment) and segment.revision == 1
    rig = Rig(tmp_path, whisper, early_window_s=None)
    whisper.windows.clear()
    rig.drafter.handle(events[0])
    early = rig.captions.get(segment.segment_id)
    assert early is not None
    early_text = early.text
    assert wer(sample_recording().utterances[2].text, early_text) < 0.2
    rig.drafter.handle(events[1])
    rig.drafter.handle(segment)
    assert len(whisper.windows) == 2  # the resumed speech needed a new draft; the end reused it
    assert len(rig.captions) == 1  # the same caption, updated in place
    final_text = rig.captions.get(segment.segment_id).text  # type: ignore[union-attr]
    both = sample_recording().utterances[2].text + " " + sample_recording().utterances[3].text
    assert wer(both, final_text) < 0.2 and final_text != early_text
    [stored] = rig.stored()
    assert stored.draft is not None and stored.draft.text == final_text


def test_a_stale_pause_is_skipped_when_its_segment_already_ended(
    tmp_path: Path, whisper: CountingWhisper, sample_pcm: bytes
) -> None:
    events = _vad_events(_utterance(sample_pcm, 4))
    rig = Rig(tmp_path, whisper, early_window_s=10.0)
    whisper.windows.clear()
    q: queue.Queue[object] = queue.Queue()
    end = object()
    for e in [*events, end]:
        q.put(e)
    rig.drafter.run(q, end)  # the machine was behind: pause and end are both waiting
    assert whisper.windows == [None]  # one inference for the segment, none for the stale pause
    assert rig.drafter.counters["pauses_skipped"] == 1 and rig.outbox.depth() == 1


def test_a_failed_transcription_commits_the_early_draft(
    tmp_path: Path, models_dir: Path, sample_pcm: bytes
) -> None:
    engine = FailingWhisper(models_dir / "tiny.en" / "onnx-int8", threads=2)
    pause, segment = _vad_events(_utterance(sample_pcm, 5))
    rig = Rig(tmp_path, engine, early_window_s=10.0)
    q: queue.Queue[object] = queue.Queue()
    end = object()
    rig.drafter.handle(pause)  # the early draft is fine
    assert engine.windows == [10.0]
    for e in [segment, end]:
        q.put(e)
    rig.drafter.run(q, end)  # the full-window one fails, never raises: committed with the early draft
    assert engine.windows == [10.0, None]
    [stored] = rig.stored()
    assert stored.draft is not None and stored.draft.text == rig.captions.get(segment.segment_id).text  # type: ignore[union-attr]
    assert wer(sample_recording().utterances[5].text, stored.draft.text) < 0.3
    assert rig.drafter.counters["errors"] == 1
