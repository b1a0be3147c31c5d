"""Property-based tests of :func:`contracts.decode`: anything that is not a valid message raises
:class:`~contracts.DecodeError` with a reason, and nothing else; valid messages round-trip exactly."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contracts as c
from contracts.messages import MESSAGE_TYPES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCHEMAS = [m.model_fields["schema_"].default for m in MESSAGE_TYPES]

# --- valid messages ---------------------------------------------------------------------------

agent_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z", fullmatch=True)
segment_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z", fullmatch=True)
seqs = st.integers(min_value=0, max_value=2**53)
numbers = st.floats(allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0, max_value=1.7e9, allow_nan=False)  # not past the receiver's clock (contracts.bounds)
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)  # no NUL
words = st.builds(c.Word, word=texts, start=numbers, end=numbers, probability=st.none() | numbers)
transcripts = st.builds(
    c.Transcript,
    text=texts,
    model_id=texts,
    language=st.none() | st.sampled_from(["en", "de", "fr"]),
    segments=st.lists(
        st.builds(c.TranscriptSegment, start=numbers, end=numbers, text=texts, words=st.lists(words, max_size=3)),
        max_size=3,
    ),
    produced_at=times,
)


@st.composite
def audio(draw: st.DrawFn) -> c.Audio:
    channels = draw(st.sampled_from([1, 2]))
    frames = draw(st.integers(min_value=0, max_value=400))
    return c.Audio(
        sample_rate=draw(st.integers(min_value=8000, max_value=48000)),
        channels=channels,
        data=draw(st.binary(min_size=2 * channels * frames, max_size=2 * channels * frames)),
    )


@st.composite
def spans(draw: st.DrawFn) -> dict[str, float]:
    start = draw(times)
    return {"started_at": start, "ended_at": start + draw(st.floats(min_value=0, max_value=60))}


@st.composite
def regions(draw: st.DrawFn, width: int, height: int) -> c.Region:
    x, y = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    return c.Region(x=x, y=y, width=draw(st.integers(1, width - x)), height=draw(st.integers(1, height - y)))


@st.composite
def messages(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    ids = {"agent_id": draw(agent_ids), "segment_id": draw(segment_ids), "seq": draw(seqs)}
    if kind is c.Segment:
        return c.Segment(**ids, **draw(spans()), audio=draw(audio()), draft=draw(st.none() | transcripts))
    if kind is c.Draft:
        return c.Draft(**ids, **draw(spans()), draft=draw(transcripts))
    if kind is c.Frame:
        image = c.Image(width=draw(st.integers(1, 8192)), height=draw(st.integers(1, 8192)),
                        data=draw(st.binary(max_size=200)))
        return c.Frame(**ids, captured_at=draw(times), image=image,
                       regions=draw(st.lists(regions(image.width, image.height), max_size=3)))
    if kind is c.Detections:
        w, h = draw(st.integers(1, 8192)), draw(st.integers(1, 8192))
        corner = st.floats(0, min(w, h) / 2)
        boxes = st.builds(c.Detection, label=texts, class_id=st.integers(0, 1000), score=st.floats(0, 1),
                          x1=corner, y1=corner, x2=st.floats(min(w, h) / 2, w), y2=st.floats(min(w, h) / 2, h))
        return c.Detections(**ids, captured_at=draw(times), width=w, height=h,
                            regions=draw(st.lists(regions(w, h), max_size=3)), boxes=draw(st.lists(boxes, max_size=4)),
                            model_id=draw(texts), worker=draw(texts), detected_at=draw(times))
    if kind is c.CloudTranscript:
        return c.CloudTranscript(**ids, **draw(spans()), transcript=draw(transcripts), worker=draw(texts))
    if kind is c.Final:
        return c.Final(
            **ids, **draw(spans()), text=draw(texts), source=draw(st.sampled_from(["cloud", "edge"])),
            version=draw(st.integers(1, 10)), transcript=draw(transcripts), draft_text=draw(st.none() | texts),
        )
    if kind is c.Receipt:
        rejections = st.builds(c.Rejection, segment_id=segment_ids, reason=st.sampled_from(c.Reason), detail=texts)
        return c.Receipt(agent_id=ids["agent_id"], accepted=draw(st.lists(segment_ids, max_size=5)),
                         rejected=draw(st.lists(rejections, max_size=3)), issued_at=draw(times))
    if kind is c.Status:
        optional = st.none() | st.floats(min_value=0, max_value=1e6)
        return c.Status(
            agent_id=ids["agent_id"], online=draw(st.booleans()), at=draw(times),
            queue_depth=draw(st.integers(0, 10**9)), oldest_age_s=draw(st.floats(0, 1e6)),
            uptime_s=draw(optional), cpu_percent=draw(optional), rss_mb=draw(optional), asr_rtf=draw(optional),
            quota_full=draw(st.booleans()), dropped_segments=draw(st.integers(0, 10**9)),
            config_version=draw(st.none() | st.integers(1, 2**53)), muted=draw(st.booleans()),
        )
    if kind is c.AgentConfig:
        return c.AgentConfig(
            agent_id=ids["agent_id"], version=draw(st.integers(1, 2**53)), issued_at=draw(times),
            muted=draw(st.none() | st.booleans()), heartbeat_s=draw(st.none() | st.floats(0.001, 3600)),
            vad_aggressiveness=draw(st.none() | st.integers(0, 3)),
            log_level=draw(st.none() | st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"])),
        )
    assert kind is c.DeadLetter
    return c.DeadLetter(
        reason=draw(st.sampled_from(c.Reason)), detail=draw(texts), source=draw(texts),
        agent_id=draw(st.none() | texts),
        received_at=draw(times), payload=draw(st.binary(max_size=200)), truncated=draw(st.booleans()),
    )


# --- arbitrary input ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
field_names = sorted({name for m in MESSAGE_TYPES for name in m.model_json_schema(by_alias=True)["properties"]})
message_like = st.dictionaries(
    st.sampled_from(field_names) | st.text(max_size=8), json_values, max_size=10
).flatmap(lambda d: st.sampled_from([*SCHEMAS, "edgecap.segment.v9", 7]).map(lambda s: {**d, "schema": s}))


def decoded_or_refused(raw: bytes, expect: type[Any] | None = None) -> Any:
    """The message, or None after checking the DecodeError; any other exception fails the test."""
    try:
        message = c.decode(raw, expect) if expect else c.decode(raw)
    except c.DecodeError as exc:
        assert isinstance(exc.reason, c.Reason) and exc.detail
        return None
    assert isinstance(message, MESSAGE_TYPES)
    assert c.decode(c.encode(message)) == message  # whatever it accepts, it can write back
    return message


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_only_raise_decode_error(raw: bytes) -> None:
    decoded_or_refused(raw)
    decoded_or_refused(raw, c.Segment)


@FUZZ
@given(json_values | message_like)
def test_arbitrary_json_only_raises_decode_error(value: Any) -> None:
    raw = json.dumps(value).encode()  # NaN and Infinity too, which are not JSON
    decoded_or_refused(raw)
    decoded_or_refused(raw, c.Segment)


@FUZZ
@given(messages())
def test_valid_messages_round_trip_exactly(message: Any) -> None:
    raw = c.encode(message)
    decoded = c.decode(raw)
    assert decoded == message and type(decoded) is type(message)
    assert c.encode(decoded) == raw
    assert c.decode(raw, type(message)) == message


@FUZZ
@given(messages(), st.data())
def test_mutated_messages_decode_or_raise_decode_error(message: Any, data: st.DataObject) -> None:
    raw = c.encode(message)
    mutation = data.draw(st.sampled_from(["truncate", "flip", "drop", "replace"]))
    if mutation == "truncate":
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mutation == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        mutated = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    else:
        obj = json.loads(raw)
        key = data.draw(st.sampled_from(sorted(obj)))
        if mutation == "drop":
            del obj[key]
        else:
            obj[key] = data.draw(json_values)
        mutated = json.dumps(obj).encode()
    decoded = decoded_or_refused(mutated)
    if mutation == "truncate":
        assert decoded is None  # a strict prefix of a JSON object is never a whole one
    if mutation == "drop" and decoded is not None:
        assert type(decoded) is type(message)  # only an optional field can go missing


def test_known_edge_cases() -> None:
    """Inputs the fuzzing found or that are easy to get wrong."""
    status = b'{"schema":"edgecap.status.v1","agent_id":"a","online":true,"at":%s}'
    for number in (b"1e400", b"NaN", b"Infinity", b"-Infinity"):
        with_number = status % number
        try:
            c.decode(with_number)
        except c.DecodeError as exc:
            assert exc.reason is c.Reason.INVALID and "finite" in exc.detail or exc.reason is c.Reason.BAD_JSON
        else:
            raise AssertionError(f"{with_number!r} decoded: not a finite time")
    for scalar in (b'"x"', b"5", b"[]", b"null", b"true"):
        try:
            c.decode(scalar)
        except c.DecodeError as exc:
            assert exc.reason is c.Reason.BAD_JSON
        else:
            raise AssertionError(f"{scalar!r} decoded")
    assert decoded_or_refused(b"[" * 100_000) is None  # deep nesting: refused, no RecursionError


# --- the base64 codec -------------------------------------------------------------------------

_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
base64_like = st.text(alphabet=_B64_CHARS + "=", max_size=24) | st.text(
    alphabet=st.sampled_from([*_B64_CHARS, "=", " ", "\n", "-", "_", "\\", "é", "\x00"]), max_size=24
)


@FUZZ
@given(text=base64_like, blob=st.binary(max_size=64))
def test_base64_codec_agrees_with_the_standard_library(text: str, blob: bytes) -> None:
    """contracts may use pybase64 (SIMD): it decodes every encoding exactly as the standard library's
    strict decoder does and encodes identically; it never accepts what the standard library refuses,
    and refuses the superfluous padding the standard library tolerates (``0000=``, ``PcnQ==``)."""
    import base64
    import binascii

    from contracts.messages import b64decode, b64encode

    canonical = base64.b64encode(blob)
    assert b64encode(blob) == canonical
    assert b64decode(canonical.decode(), validate=True) == blob
    for candidate in (text, canonical.decode() + text):
        try:
            expected: bytes | None = base64.b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):
            expected = None
        try:
            got: bytes | None = b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):
            got = None
        assert got is None or got == expected, candidate
