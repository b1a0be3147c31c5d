"""Every value that decodes can be stored (issue 9 §2).

Each limit of :mod:`contracts.bounds` is probed at the bound, just inside it and just beyond it:
a message with a value within the limits decodes, and a draft or cloud transcript that decodes is
stored through the real :class:`~cloud.store.Store` and the rule, as the reconciler does, in an
SQLite file and in a real PostgreSQL (the ``store_url`` fixture), and is read back equal; a value
beyond a limit is refused at decoding with :attr:`~contracts.Reason.INVALID`, naming the field.
A hypothesis test then combines several limits and arbitrary texts in one message.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contracts as c
from cloud.rule import reconcile
from cloud.store import Store
from contracts import bounds as b

Path = tuple[str | int, ...]
Value = Callable[[], Any]  # built when used: times follow the clock, long values are built once per case


@dataclass(frozen=True)
class Edge:
    """One limit: the fields it applies to (set to the same value), values at and just inside it,
    and values just beyond it."""

    name: str
    paths: tuple[Path, ...]
    inside: tuple[Value, ...]
    beyond: tuple[Value, ...]


def _int_edge(name: str, path: Path, low: int, high: int) -> Edge:
    return Edge(name, (path,), (lambda: low, lambda: low + 1, lambda: high - 1, lambda: high),
                (lambda: low - 1, lambda: high + 1, lambda: 2**64))


def _time_edge(name: str, *paths: Path) -> Edge:
    earliest = b.EARLIEST_TIME
    return Edge(
        name,
        paths,
        (lambda: earliest, lambda: math.nextafter(earliest, math.inf), time.time,
         lambda: time.time() + b.FUTURE_MARGIN_S - 60),
        (lambda: math.nextafter(earliest, -math.inf), lambda: earliest - 1,
         lambda: time.time() + b.FUTURE_MARGIN_S + 60, lambda: 1e300),
    )


def _text_edge(name: str, path: Path, limit: int, *, empty: bool = True) -> Edge:
    inside: tuple[Value, ...] = (lambda: "x" * limit, lambda: "x" * (limit - 1), lambda: "é" * limit,
                                 lambda: "\U0001f600" * limit, lambda: "a\nb\tc\x01")
    return Edge(name, (path,), ((lambda: "") if empty else (lambda: "x"), *inside),
                (lambda: "x" * (limit + 1), lambda: "é" * (limit + 1), lambda: "a\x00b"))


def _list_edge(name: str, path: Path, limit: int, item: Value) -> Edge:
    return Edge(name, (path,), (lambda: [item()] * limit, lambda: [item()] * (limit - 1)),
                (lambda: [item()] * (limit + 1),))


def _unique_id(length: int) -> str:
    return (uuid.uuid4().hex * (length // 32 + 1))[:length]


SPAN = {"start": 0.0, "end": 1.5, "text": "span", "words": []}
WORD = {"word": "w", "start": 0.0, "end": 0.5, "probability": 0.9}


def transcript_edges(prefix: Path) -> list[Edge]:
    """The limits of a :class:`~contracts.Transcript` at ``prefix``."""
    return [
        _text_edge("text", (*prefix, "text"), b.MAX_TEXT_CHARS),
        _text_edge("model_id", (*prefix, "model_id"), b.MAX_NAME_CHARS),
        _text_edge("language", (*prefix, "language"), b.MAX_LANGUAGE_CHARS),
        _time_edge("produced_at", (*prefix, "produced_at")),
        _list_edge("spans", (*prefix, "segments"), b.MAX_SPANS, lambda: SPAN),
        _list_edge("words", (*prefix, "segments"), b.MAX_WORDS, lambda: WORD),  # fixed below: one span of words
        _text_edge("span text", (*prefix, "segments", 0, "text"), b.MAX_TEXT_CHARS),
        _text_edge("word", (*prefix, "segments", 0, "words", 0, "word"), b.MAX_WORD_CHARS, empty=False),
    ]


HEADER_EDGES = [
    _int_edge("seq", ("seq",), 0, b.MAX_INT),
    Edge("agent_id", (("agent_id",),), (lambda: "a" * 64, lambda: "a" * 63), (lambda: "a" * 65,)),
    Edge("segment_id", (("segment_id",),), (lambda: _unique_id(128), lambda: _unique_id(127)),
         (lambda: _unique_id(129),)),
    _time_edge("capture times", ("started_at",), ("ended_at",)),
]
DRAFT_EDGES = HEADER_EDGES + transcript_edges(("draft",))
TRANSCRIPT_EDGES = [
    *HEADER_EDGES,
    *transcript_edges(("transcript",)),
    _text_edge("worker", ("worker",), b.MAX_NAME_CHARS),
]


# --- building messages at an edge --------------------------------------------------------------


def _set(doc: Any, path: Path, value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def mutate(raw: bytes, edge: Edge, value: Any) -> bytes:
    """``raw`` with the edge's fields set to ``value``. The "words" edge is a list of words in one
    span; an edge inside the first span or word of a transcript gets one to reach into."""
    doc = json.loads(raw)
    for path in edge.paths:
        if "segments" in path:
            transcript = doc
            for step in path[: path.index("segments")]:
                transcript = transcript[step]
            transcript["segments"] = transcript["segments"] or [dict(SPAN, words=[dict(WORD)])]
            if edge.name == "words":
                value = [dict(transcript["segments"][0], words=value)]
            elif "words" in path and not transcript["segments"][0]["words"]:
                transcript["segments"][0]["words"] = [dict(WORD)]
        _set(doc, path, value)
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def edge_named(edges: list[Edge], name: str) -> Edge:
    return next(e for e in edges if e.name == name)


def base_draft(segment_id: str) -> c.Draft:
    now = time.time()
    edge = c.Transcript(text="the draft", model_id="whisper-tiny.en-int8-onnx", produced_at=now)
    return c.Draft(agent_id="pi-bounds", segment_id=segment_id, seq=7, started_at=now - 3, ended_at=now - 1, draft=edge)


def base_transcript(segment_id: str) -> c.CloudTranscript:
    now = time.time()
    cloud = c.Transcript(text="The cloud text.", model_id="whisper-base", produced_at=now)
    return c.CloudTranscript(
        agent_id="pi-bounds", segment_id=segment_id, seq=7, started_at=now - 3, ended_at=now - 1,
        transcript=cloud, worker="worker-1",
    )


def refused(raw: bytes, expect: type[Any], edges: list[Edge]) -> None:
    """``raw`` is refused as invalid, the detail naming one of the fields beyond their limits."""
    with pytest.raises(c.DecodeError) as info:
        c.decode(raw, expect)
    assert info.value.reason is c.Reason.INVALID, info.value
    fields = [".".join(str(p) for p in path) for e in edges for path in e.paths]
    assert any(info.value.detail.startswith(f) for f in fields), (info.value.detail, fields)


# --- storing what decodes ----------------------------------------------------------------------


def store_and_read_back(store: Store, draft: c.Draft, transcript: c.CloudTranscript) -> None:
    """Store a draft and then a transcript of one segment as the reconciler does, and check that
    everything reads back equal."""
    assert store.upsert_draft(draft) is True
    final = store.record_final(transcript, reconcile)
    assert final is not None
    row = store.get((draft.agent_id, draft.segment_id))
    assert row is not None and row["draft"] is not None and row["final"] is not None
    assert (row["agent_id"], row["seq"], row["started_at"], row["ended_at"]) == (
        draft.agent_id, draft.seq, draft.started_at, draft.ended_at,
    )
    assert row["draft"] == {
        "text": draft.draft.text.strip(), "model_id": draft.draft.model_id, "produced_at": draft.draft.produced_at,
    }
    expected = reconcile(transcript, draft.draft.text.strip())
    assert (row["final"]["text"], row["final"]["source"], row["final"]["version"]) == (
        expected.text, expected.source, expected.version,
    )
    assert row["final"]["produced_at"] == transcript.transcript.produced_at
    assert store.unpublished_final((draft.agent_id, draft.segment_id)) == final  # the Final as sent, read back whole
    assert [(v["version"], v["text"]) for v in store.versions((draft.agent_id, draft.segment_id))] == [
        (1, draft.draft.text.strip()), (2, expected.text),
    ]


def same_header(draft_raw: bytes, transcript_raw: bytes) -> bytes:
    """The transcript with the draft's header (a transcript and its draft are of one segment)."""
    draft_doc, doc = json.loads(draft_raw), json.loads(transcript_raw)
    for name in c.messages.HEADER_FIELDS:
        doc[name] = draft_doc[name]
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def test_every_limit_of_a_stored_message_at_and_beyond(store: Store) -> None:
    """Each limit of a draft and a cloud transcript, one at a time: at and just inside it the
    message decodes and is stored and read back equal; just beyond it it is refused."""
    cases = [(e, "draft") for e in DRAFT_EDGES] + [(e, "transcript") for e in TRANSCRIPT_EDGES]
    stored = 0
    for edge, which in cases:
        for make, inside in [(v, True) for v in edge.inside] + [(v, False) for v in edge.beyond]:
            sid = c.new_segment_id()
            value = make()
            draft_raw = c.encode(base_draft(sid))
            transcript_raw = c.encode(base_transcript(sid))
            if which == "draft" or edge in HEADER_EDGES:
                draft_raw = mutate(draft_raw, edge, value)
            if which == "transcript":
                transcript_raw = mutate(transcript_raw, edge, value)
            if edge in HEADER_EDGES:
                transcript_raw = same_header(draft_raw, transcript_raw)
            raw = draft_raw if which == "draft" else transcript_raw
            expect: type[Any] = c.Draft if which == "draft" else c.CloudTranscript
            if not inside:
                refused(raw, expect, [edge])
                continue
            draft, transcript = c.decode(draft_raw, c.Draft), c.decode(transcript_raw, c.CloudTranscript)
            store_and_read_back(store, draft, transcript)
            stored += 1
    assert stored == store.counts()["finals"] > 100


# --- every other message: decode at and beyond its limits --------------------------------------


def _segment() -> c.Segment:
    now = time.time()
    return c.Segment(agent_id="pi-bounds", segment_id="s-1", seq=1, started_at=now - 1, ended_at=now,
                     audio=c.Audio(sample_rate=16000, channels=2, data=b"\x00" * 8))


def _others() -> list[tuple[c.messages._Model, list[Edge]]]:
    now = time.time()
    t = c.Transcript(text="x", model_id="m", produced_at=now,
                     segments=[c.TranscriptSegment(start=0, end=1, text="x", words=[c.Word(word="w", start=0, end=1)])])
    return [
        (_segment(), [
            *HEADER_EDGES,
            _int_edge("sample_rate", ("audio", "sample_rate"), *b.SAMPLE_RATES_HZ),
            Edge("channels", (("audio", "channels"),), (lambda: 1, lambda: 2), (lambda: 0, lambda: 3)),
        ]),
        (_segment().model_copy(update={"audio": c.Audio(codec="opus", sample_rate=16000, samples=1, data=b"OggS")}), [
            _int_edge("samples", ("audio", "samples"), 0, b.MAX_AUDIO_SAMPLES),
            Edge("sample_rate", (("audio", "sample_rate"),), tuple((lambda r=r: r) for r in b.OPUS_SAMPLE_RATES_HZ),
                 (lambda: 44_100, lambda: 22_050, lambda: 7_999)),
        ]),
        (c.Frame(agent_id="cam-1", segment_id="f-1", seq=1, captured_at=now,
                 image=c.Image(width=1, height=1, data=b"\xff\xd8\xff")), [
            _int_edge("seq", ("seq",), 0, b.MAX_INT),
            _time_edge("captured_at", ("captured_at",)),
            _int_edge("width", ("image", "width"), 1, b.MAX_IMAGE_SIDE),
            _int_edge("height", ("image", "height"), 1, b.MAX_IMAGE_SIDE),
        ]),
        (c.Final(agent_id="pi-1", segment_id="s-1", seq=1, started_at=now - 1, ended_at=now, text="x",
                 source="cloud", version=2, transcript=t, draft_text="y"), [
            *HEADER_EDGES,
            _int_edge("version", ("version",), 1, b.MAX_INT),
            _text_edge("text", ("text",), b.MAX_TEXT_CHARS),
            _text_edge("draft_text", ("draft_text",), b.MAX_TEXT_CHARS),
            *transcript_edges(("transcript",)),
        ]),
        (c.Receipt(agent_id="pi-1", accepted=["s-1"], rejected=[c.Rejection(segment_id="s-2", reason="invalid")],
                   issued_at=now), [
            _list_edge("accepted", ("accepted",), b.MAX_RECEIPT_IDS, lambda: "s-1"),
            _list_edge("rejected", ("rejected",), b.MAX_RECEIPT_IDS,
                       lambda: {"segment_id": "s-2", "reason": "invalid", "detail": ""}),
            _text_edge("detail", ("rejected", 0, "detail"), b.MAX_DETAIL_CHARS),
            _time_edge("issued_at", ("issued_at",)),
        ]),
        (c.Status(agent_id="pi-1", online=True, at=now, config_version=1), [
            _time_edge("at", ("at",)),
            _int_edge("queue_depth", ("queue_depth",), 0, b.MAX_INT),
            _int_edge("dropped_segments", ("dropped_segments",), 0, b.MAX_INT),
            _int_edge("config_version", ("config_version",), 1, b.MAX_INT),
        ]),
        (c.AgentConfig(agent_id="pi-1", version=1, issued_at=now), [
            _int_edge("version", ("version",), 1, b.MAX_INT),
            _time_edge("issued_at", ("issued_at",)),
        ]),
        (c.DeadLetter(reason="invalid", detail="d", source="t", agent_id="pi-1", received_at=now, payload=b"x"), [
            _text_edge("detail", ("detail",), b.MAX_DETAIL_CHARS),
            _text_edge("source", ("source",), b.MAX_SOURCE_CHARS),
            _text_edge("agent_id", ("agent_id",), b.MAX_SOURCE_CHARS),
            _time_edge("received_at", ("received_at",)),
        ]),
    ]


def test_every_limit_of_every_other_message_at_and_beyond() -> None:
    """The messages the store does not hold: at and inside a limit they decode and encode back to
    the same message; beyond it they are refused, naming the field."""
    checked = 0
    for message, edges in _others():
        kind = type(message)
        for edge in edges:
            for make in edge.inside:
                decoded = c.decode(mutate(c.encode(message), edge, make()), kind)
                assert c.decode(c.encode(decoded), kind) == decoded
                checked += 1
            for make in edge.beyond:
                refused(mutate(c.encode(message), edge, make()), kind, [edge])
                checked += 1
    assert checked > 150


def test_refusal_details_fit_their_fields() -> None:
    """A refusal's detail is cut to what a rejection and a dead letter hold, so building them never fails."""
    error = c.DecodeError(c.Reason.INVALID, "x\x00" * b.MAX_DETAIL_CHARS)
    assert len(error.detail) == b.MAX_DETAIL_CHARS and "\x00" not in error.detail
    c.Rejection(segment_id="s-1", reason=error.reason, detail=error.detail)


# --- several limits at once, with arbitrary texts ------------------------------------------------

LIST_EDGES = ("spans", "words")
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)


@st.composite
def stored_pairs(draw: st.DrawFn) -> tuple[bytes, bytes, list[Edge], bool]:
    """A draft and a transcript of one segment with arbitrary texts and up to three limits each
    probed at, inside or beyond; whether every value is within the limits."""
    sid = c.new_segment_id()
    draft_raw = mutate(c.encode(base_draft(sid)), edge_named(DRAFT_EDGES, "text"), draw(texts))
    transcript_raw = mutate(c.encode(base_transcript(sid)), edge_named(TRANSCRIPT_EDGES, "text"), draw(texts))
    beyond: list[Edge] = []
    for which, edges in (("draft", DRAFT_EDGES), ("transcript", TRANSCRIPT_EDGES)):
        chosen = draw(st.lists(st.sampled_from(edges), max_size=3, unique_by=lambda e: e.paths))
        # a list of spans or of words replaces the first span: at most one of them, and before the
        # edges that reach into that span
        lists = [e for e in chosen if e.name in LIST_EDGES][:1]
        for edge in lists + [e for e in chosen if e.name not in LIST_EDGES]:
            out = draw(st.booleans())
            make = draw(st.sampled_from(edge.beyond if out else edge.inside))
            if which == "draft":
                draft_raw = mutate(draft_raw, edge, make())
            else:
                transcript_raw = mutate(transcript_raw, edge, make())
            if out:
                beyond.append(edge)
    return draft_raw, transcript_raw, beyond, not beyond


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pair=stored_pairs())
def test_what_decodes_is_stored_whatever_the_mix(store: Store, pair: tuple[bytes, bytes, list[Edge], bool]) -> None:
    draft_raw, transcript_raw, beyond, within = pair
    try:
        draft = c.decode(draft_raw, c.Draft)
        transcript = c.decode(transcript_raw, c.CloudTranscript)
    except c.DecodeError as exc:
        assert not within, f"refused within the limits: {exc}"
        assert exc.reason is c.Reason.INVALID
        return
    assert within, f"decoded beyond {[e.name for e in beyond]}"
    # the transcript of the draft's segment (the two headers were probed apart)
    transcript = c.CloudTranscript(**draft.header(), transcript=transcript.transcript, worker=transcript.worker)
    store_and_read_back(store, draft, transcript)
