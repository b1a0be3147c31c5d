"""The outbox quota: a small quota filled on purpose applies its policy, counts, flags, recovers."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from contracts import Audio, CloudTranscript, Segment, Transcript, Up, decode, encode, mqtt_topic
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.quota import FullPolicy, OutboxFull, Quota, strip_audio
from runtime.settings import MqttSettings

AGENT = "quota-agent"
TOPIC = mqtt_topic(AGENT, Up.SEGMENTS)
PCM_BYTES = 32_000  # 1 s of 16 kHz PCM16


def segment(sid: str, seq: int) -> bytes:
    draft = Transcript(text=f"draft of {sid}", model_id="edge", produced_at=2.0)
    pcm = bytes([seq % 251]) * PCM_BYTES
    return encode(Segment(agent_id=AGENT, segment_id=sid, seq=seq, started_at=1.0, ended_at=2.0,
                          audio=Audio(sample_rate=16000, data=pcm), draft=draft))


def add(box: Outbox, sid: str) -> int:
    return box.append(sid, TOPIC, lambda seq: segment(sid, seq), audio_bytes=PCM_BYTES)


def one_size() -> int:
    return len(segment("q0", 0))


def draft_size() -> int:
    return len(strip_audio(segment("q0", 0)) or b"")


def test_drop_oldest_audio_keeps_every_segment_and_draft(tmp_path: Path) -> None:
    size = one_size()
    room = 5 * size + 5 * draft_size()
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=room, policy=FullPolicy.DROP_OLDEST_AUDIO))
    for i in range(5):
        add(box, f"q{i}")
    assert not box.quota_full() and box.counters()["dropped_audio_segments"] == 0
    for i in range(5, 8):
        add(box, f"q{i}")  # each needs the audio of one older segment
    assert box.quota_full()
    assert box.counters() == {"dropped_audio_segments": 3, "dropped_audio_bytes": 3 * PCM_BYTES,
                              "refused_segments": 0}
    assert box.stored_bytes() <= room
    entries = box.due(100)
    assert [e.seq for e in entries] == list(range(8))  # nothing lost, order kept
    segments = [decode(e.payload, Segment) for e in entries]
    assert [len(s.audio.data) for s in segments] == [0, 0, 0] + [PCM_BYTES] * 5  # the oldest lost their audio
    assert all(s.draft and s.draft.text == f"draft of {s.segment_id}" for s in segments)
    assert segments[0].audio.sample_rate == 16000 and segments[0].audio.duration_s == 0

    box.remove([e.segment_id for e in entries[:6]])  # receipts make room: the flag drops by itself
    assert not box.quota_full()
    add(box, "q8")
    assert len(decode(box.due(100)[-1].payload, Segment).audio.data) == PCM_BYTES
    assert box.counters()["dropped_audio_segments"] == 3


def test_drop_oldest_audio_refuses_only_when_drafts_alone_fill_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=3 * draft_size() + 10, policy=FullPolicy.DROP_OLDEST_AUDIO))
    add(box, "a")  # too big with its audio: stored as a draft only
    add(box, "b")
    add(box, "c")
    with pytest.raises(OutboxFull):
        add(box, "d")  # three drafts fill it: not even d's draft fits
    entries = box.due(10)
    assert [e.segment_id for e in entries] == ["a", "b", "c"]
    assert all(decode(e.payload, Segment).audio.data == b"" for e in entries)
    assert box.counters() == {"dropped_audio_segments": 3, "dropped_audio_bytes": 3 * PCM_BYTES,
                              "refused_segments": 1}
    assert box.next_seq() == 3  # the refused segment used no seq


def test_refuse_new_audio_keeps_stored_audio_and_resumes(tmp_path: Path) -> None:
    size = one_size()
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=4 * size + 100, policy=FullPolicy.REFUSE_NEW_AUDIO))
    for i in range(4):
        add(box, f"q{i}")
    for i in range(4, 7):
        with pytest.raises(OutboxFull, match="refuse_new_audio"):
            add(box, f"q{i}")
    assert box.quota_full()
    assert box.counters() == {"dropped_audio_segments": 0, "dropped_audio_bytes": 0, "refused_segments": 3}
    entries = box.due(100)
    assert [e.segment_id for e in entries] == ["q0", "q1", "q2", "q3"]
    assert all(len(decode(e.payload, Segment).audio.data) == PCM_BYTES for e in entries)
    assert box.next_seq() == 4

    box.remove(["q0", "q1"])
    assert not box.quota_full()
    assert add(box, "q7") == 4  # accepted again, seq continues without a gap
    assert box.depth() == 3


def test_free_disk_space_is_honoured(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    # leave this outbox about 20 MB of the real disk, whatever max_bytes says. The disk is shared:
    # the flag would drop (hysteresis: RESUME_FRACTION) only if others freed ~2 MB meanwhile
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=2**40, policy=FullPolicy.REFUSE_NEW_AUDIO,
                                          min_free_disk_mb=free_mb - 20))
    stored = 0
    with pytest.raises(OutboxFull):
        for i in range(5000):
            add(box, f"q{i}")
            stored += 1
    assert 50 <= stored < 2000
    assert box.quota_full() and box.counters()["refused_segments"] == 1


def test_the_status_carries_the_flag_and_the_counts(tmp_path: Path) -> None:
    size = one_size()
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=2 * size + 4 * draft_size()))
    link = MqttLink(AGENT, MqttSettings(port=1), box, on_final=lambda f: None)  # never started: no broker needed
    assert link.status().quota_full is False
    for i in range(4):
        add(box, f"q{i}")
    status = link.status()
    assert status.quota_full is True and status.dropped_segments == 2 and status.queue_depth == 4
    box.remove(["q0", "q1", "q2", "q3"])
    assert link.status().quota_full is False


def test_a_segment_without_audio_still_passes_the_bridge_and_keeps_its_draft_as_final() -> None:
    from bridge.validation import check_segment
    from cloud.audio import to_float32
    from cloud.rule import reconcile

    raw = strip_audio(segment("q0", 0))
    assert raw is not None
    checked = check_segment(raw, AGENT, max_bytes=1 << 20, sample_rates=[16000], max_audio_s=30)
    assert checked.audio.data == b"" and checked.draft is not None
    assert to_float32(checked.audio).size == 0  # the worker's engines answer "" for empty audio
    cloud = CloudTranscript(agent_id=AGENT, segment_id="q0", seq=0, started_at=1, ended_at=2, worker="w",
                            transcript=Transcript(text="", model_id="cloud", produced_at=time.time()))
    final = reconcile(cloud, checked.draft.text)
    assert (final.source, final.text) == ("edge", "draft of q0")
