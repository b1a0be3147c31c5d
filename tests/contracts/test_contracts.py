"""The wire contract: round trips, typed errors, and the committed JSON Schema document."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import contracts as c
from contracts.schema.__main__ import PATH as SCHEMA_PATH
from contracts.schema.__main__ import render


def segment(**overrides: object) -> c.Segment:
    now = time.time()
    fields: dict[str, object] = dict(
        agent_id="pi-1",
        segment_id=c.new_segment_id(),
        seq=3,
        started_at=now,
        ended_at=now + 1.0,
        audio=c.Audio(sample_rate=16000, data=b"\x01\x00" * 16000),
        draft=c.Transcript(text="hello there", model_id="whisper-tiny.en-int8-onnx", produced_at=now + 1.1),
    )
    fields.update(overrides)
    return c.Segment(**fields)  # type: ignore[arg-type]


def test_segment_round_trip_is_exact() -> None:
    s = segment()
    raw = c.encode(s)
    assert c.decode(raw) == s
    assert c.decode(raw, c.Segment).audio.duration_s == pytest.approx(1.0)
    assert json.loads(raw)["schema"] == "edgecap.segment.v1"
    assert c.encode(c.decode(raw)) == raw


def test_every_message_type_round_trips() -> None:
    s = segment()
    t = c.Transcript(text="x", model_id="m", produced_at=1.0)
    messages = [
        s,
        c.Draft.of(s),
        c.Frame(agent_id="pi-1", segment_id="f1", seq=1, captured_at=1.0,
                image=c.Image(width=2, height=2, data=b"\xff\xd8"), regions=[c.Region(x=0, y=1, width=2, height=1)]),
        c.Detections(agent_id="pi-1", segment_id="f1", seq=1, captured_at=1.0, width=640, height=480,
                     boxes=[c.Detection(label="cat", class_id=15, score=0.5, x1=1, y1=2, x2=30.5, y2=40)],
                     model_id="yolov3-tiny@onnx-darknet:0123456789ab", worker="w1", detected_at=2.0),
        c.CloudTranscript(agent_id="pi-1", segment_id=s.segment_id, seq=3, started_at=1, ended_at=2,
                          transcript=t, worker="w1"),
        c.Final(agent_id="pi-1", segment_id=s.segment_id, seq=3, started_at=1, ended_at=2, text="x",
                source="cloud", version=2, transcript=t, draft_text="y"),
        c.Receipt(agent_id="pi-1", accepted=[s.segment_id],
                  rejected=[c.Rejection(segment_id="b", reason="bad_audio")], issued_at=1.0),
        c.Status(agent_id="pi-1", online=True, at=1.0, queue_depth=2),
        c.AgentConfig(agent_id="pi-1", version=3, issued_at=1.0, muted=True, log_level="DEBUG"),
        c.DeadLetter(reason="bad_json", detail="d", source="t", received_at=1.0, payload=b"\x00\xff"),
    ]
    assert {type(m) for m in messages} == set(c.messages.MESSAGE_TYPES)
    for m in messages:
        assert c.decode(c.encode(m)) == m


def test_audio_codecs_on_the_wire() -> None:
    """The codec field (issue 9 §6): old producers' segments (no codec, no samples) still decode as
    PCM16; compressed audio carries its sample count, so the duration needs no decoding."""
    assert c.messages.AudioCodec.__args__ == c.bounds.AUDIO_CODECS  # type: ignore[attr-defined]
    old = json.loads(c.encode(segment()))
    del old["audio"]["codec"], old["audio"]["samples"]
    legacy = c.decode(json.dumps(old).encode(), c.Segment).audio
    assert legacy.codec == "pcm_s16le" and legacy.samples is None and legacy.duration_s == pytest.approx(1.0)
    for codec in ("opus", "flac"):
        audio = c.Audio(codec=codec, sample_rate=16000, samples=24000, data=b"OggS or fLaC, not checked here")
        assert c.decode(c.encode(segment(audio=audio)), c.Segment).audio.duration_s == pytest.approx(1.5)
        with pytest.raises(ValueError, match=f"{codec} audio needs samples"):
            c.Audio(codec=codec, sample_rate=16000, data=b"x")
    assert c.Audio(sample_rate=8000, samples=2, data=b"\x00" * 4).duration_s == pytest.approx(2 / 8000)
    refused = {
        "samples of PCM that differ from its data": dict(codec="pcm_s16le", samples=3, data="AAAAAA=="),
        "opus at a rate Opus lacks": dict(codec="opus", sample_rate=22050, samples=1),
        "a codec nobody knows": dict(codec="mp3", samples=1),
        "more samples than the bound": dict(codec="flac", samples=c.bounds.MAX_AUDIO_SAMPLES + 1),
        "negative samples": dict(codec="flac", samples=-1),
    }
    for name, audio in refused.items():
        raw = json.loads(c.encode(segment()))
        raw["audio"].update(audio)
        with pytest.raises(c.DecodeError) as info:
            c.decode(json.dumps(raw).encode(), c.Segment)
        assert info.value.reason is c.Reason.INVALID and info.value.detail.startswith("audio"), name


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", c.Reason.BAD_JSON),
        (b"\xff\xfe\x00", c.Reason.BAD_JSON),
        (b'{"schema": "edgecap.nope.v9"}', c.Reason.UNKNOWN_SCHEMA),
        (b'{"agent_id": "pi-1"}', c.Reason.UNKNOWN_SCHEMA),
        (b'{"schema": "edgecap.segment.v1", "agent_id": "pi-1"}', c.Reason.INVALID),
    ],
)
def test_malformed_input_gets_a_typed_error(raw: bytes, reason: c.Reason) -> None:
    with pytest.raises(c.DecodeError) as info:
        c.decode(raw)
    assert info.value.reason is reason
    assert info.value.detail


def test_field_level_problems_are_invalid() -> None:
    good = json.loads(c.encode(segment()))
    cases = {
        "agent_id": "../evil",  # not a topic-safe id
        "seq": -1,
        "ended_at": 0.0,  # before started_at
    }
    for field, value in cases.items():
        bad = dict(good, **{field: value})
        with pytest.raises(c.DecodeError) as info:
            c.decode(json.dumps(bad).encode())
        assert info.value.reason is c.Reason.INVALID, field
    even = dict(good, audio=dict(good["audio"], data="AAA="))  # 2 bytes: one PCM16 frame
    assert c.decode(json.dumps(even).encode(), c.Segment).audio.data == b"\x00\x00"
    odd = dict(good, audio=dict(good["audio"], data="AA=="))  # 1 byte: not a whole PCM16 frame
    with pytest.raises(c.DecodeError):
        c.decode(json.dumps(odd).encode())
    not_b64 = dict(good, audio=dict(good["audio"], data="%%%"))
    with pytest.raises(c.DecodeError):
        c.decode(json.dumps(not_b64).encode())


def test_size_limit_and_expected_type() -> None:
    raw = c.encode(segment())
    with pytest.raises(c.DecodeError) as info:
        c.decode(raw, max_bytes=100)
    assert info.value.reason is c.Reason.TOO_LARGE
    with pytest.raises(c.DecodeError) as info:
        c.decode(raw, c.Receipt)
    assert info.value.reason is c.Reason.UNKNOWN_SCHEMA


def test_committed_schema_document_matches_the_python_types() -> None:
    assert SCHEMA_PATH.read_text() == render(), "run: python -m contracts.schema"
    doc = json.loads(SCHEMA_PATH.read_text())
    kinds = {d["properties"]["schema"]["const"] for d in doc["$defs"].values() if "schema" in d.get("properties", {})}
    assert kinds == {m.model_fields["schema_"].default for m in c.messages.MESSAGE_TYPES}


def test_schema_document_validates_real_messages() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(Path(SCHEMA_PATH).read_text())
    jsonschema.validate(json.loads(c.encode(segment())), doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "edgecap.segment.v1", "agent_id": "pi-1"}, doc)


def test_topics() -> None:
    assert c.mqtt_topic("pi-1", c.Up.SEGMENTS) == "edgecap/v1/agents/pi-1/segments"
    assert c.parse_mqtt_topic("edgecap/v1/agents/pi-1/segments") == ("pi-1", "segments")
    assert c.shared_filter("g", c.Up.SEGMENTS) == "$share/g/edgecap/v1/agents/+/segments"
    for bad in ("edgecap/v1/agents/pi-1", "other/pi-1/segments", "edgecap/v1/agents//segments"):
        with pytest.raises(ValueError):
            c.parse_mqtt_topic(bad)


def test_segment_ids_are_unique_and_time_ordered() -> None:
    ids = [c.new_segment_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    first, later = ids[0], c.new_segment_id()
    time.sleep(0.002)
    assert c.new_segment_id() > first
    assert later[14] == "7"  # UUID version 7


def test_a_frame_s_regions_lie_inside_it_and_have_an_area() -> None:
    image = c.Image(width=64, height=48, data=b"\xff\xd8")
    ok = c.Frame(agent_id="pi-1", segment_id="f1", seq=1, captured_at=1.0, image=image,
                 regions=[c.Region(x=60, y=40, width=4, height=8)])  # fmt: skip
    assert c.decode(c.encode(ok)) == ok
    raw = json.loads(c.encode(ok))
    raw["regions"][0]["width"] = 5
    with pytest.raises(c.DecodeError, match="reaches outside the 64x48 image") as outside:
        c.decode(json.dumps(raw).encode())
    assert outside.value.reason == c.Reason.INVALID
    raw["regions"][0].update(width=0)
    with pytest.raises(c.DecodeError, match="regions.0.width") as empty:
        c.decode(json.dumps(raw).encode())
    assert empty.value.reason == c.Reason.INVALID
