"""The wire messages of edgecap.

Every message is one JSON object whose ``schema`` field names its type and version
(``edgecap.segment.v1`` …). Binary payloads (audio, JPEG) are base64 strings. MQTT and Kafka
carry exactly the bytes :func:`encode` produces, so a component in another language needs only
``contracts/schema/edgecap-v1.schema.json``.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from contracts.errors import DecodeError, Reason
from contracts.ids import AGENT_ID_PATTERN, SEGMENT_ID_PATTERN

try:  # SIMD base64: a 160 KiB segment's audio decodes in ~40 µs instead of ~500 µs
    from pybase64 import b64decode, b64encode
except ImportError:  # a device without a wheel for it: the standard library, same results
    from base64 import b64decode, b64encode  # type: ignore[assignment]

AgentId = Annotated[
    str,
    StringConstraints(pattern=AGENT_ID_PATTERN),
    Field(description="Device identity; also its MQTT user name and topic segment."),
]
SegmentId = Annotated[
    str,
    StringConstraints(pattern=SEGMENT_ID_PATTERN),
    Field(description="Unique id of a captured item, stable across retries."),
]
Seq = Annotated[int, Field(ge=0, description="Per-agent, strictly increasing sequence number.")]
UnixTime = Annotated[float, Field(ge=0, description="Seconds since the Unix epoch (UTC).")]


def _b64_decode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        return b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


Base64Bytes = Annotated[
    bytes,
    PlainValidator(_b64_decode),
    PlainSerializer(lambda b: b64encode(b).decode("ascii"), return_type=str),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


class _Model(BaseModel):
    # no NaN/Infinity (JSON has neither; 1e400 parses as inf): encode() would write null and the
    # message could not be read back
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


# --- transcripts -------------------------------------------------------------------------


class Word(_Model):
    """One word with its time span in seconds from the start of the segment."""

    word: str
    start: float
    end: float
    probability: float | None = None


class TranscriptSegment(_Model):
    """A span of a transcript, times in seconds from the start of the audio segment."""

    start: float
    end: float
    text: str
    words: list[Word] = Field(default_factory=list)


class Transcript(_Model):
    """Text of one audio segment by one model."""

    text: str
    model_id: str = Field(description="Which model produced this text, e.g. 'whisper-tiny.en-int8-onnx'.")
    language: str | None = None
    segments: list[TranscriptSegment] = Field(default_factory=list)
    produced_at: UnixTime = Field(description="When the text was ready.")


# --- payloads ---------------------------------------------------------------------------

class Audio(_Model):
    """Mono or multi-channel PCM audio."""

    codec: Literal["pcm_s16le"] = "pcm_s16le"
    sample_rate: int = Field(ge=8000, le=48000)
    channels: int = Field(default=1, ge=1, le=2)
    data: Base64Bytes

    @model_validator(mode="after")
    def _whole_frames(self) -> Audio:
        if len(self.data) % (2 * self.channels):
            raise ValueError("pcm_s16le data is not a whole number of frames")
        return self

    @property
    def duration_s(self) -> float:
        return len(self.data) / (2 * self.channels * self.sample_rate)


class Image(_Model):
    """An encoded still image."""

    codec: Literal["jpeg"] = "jpeg"
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    data: Base64Bytes


# --- messages ---------------------------------------------------------------------------


class SegmentHeader(_Model):
    """What every message about one captured segment starts with: whose it is, which one, and when.

    :class:`Segment`, :class:`Draft`, :class:`CloudTranscript` and :class:`Final` are this header
    plus their own fields; :meth:`header` carries it from one message to the next one derived from it.
    """

    # each message narrows it to its own name; declared here so that it stays the first key on the wire
    schema_: str = Field(alias="schema")
    agent_id: AgentId
    segment_id: SegmentId
    seq: Seq
    started_at: UnixTime = Field(description="Capture time of the first sample.")
    ended_at: UnixTime = Field(description="Capture time just after the last sample.")

    def header(self) -> dict[str, Any]:
        """The header's fields by name (``agent_id`` … ``ended_at``), to build the next message
        about the same segment: ``Draft(**segment.header(), draft=...)``."""
        return {name: getattr(self, name) for name in HEADER_FIELDS}


HEADER_FIELDS = tuple(name for name in SegmentHeader.model_fields if name != "schema_")


class Segment(SegmentHeader):
    """An utterance captured on a device, with its on-device draft (agent → bridge → Kafka)."""

    schema_: Literal["edgecap.segment.v1"] = Field(default="edgecap.segment.v1", alias="schema")
    audio: Audio
    draft: Transcript | None = None

    @model_validator(mode="after")
    def _ordered_times(self) -> Segment:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self


class Draft(SegmentHeader):
    """The edge draft of a segment without its audio. The reconciler derives one from each segment
    (whose draft travels inside it); ``edgecap.drafts`` takes drafts sent apart from their segment."""

    schema_: Literal["edgecap.draft.v1"] = Field(default="edgecap.draft.v1", alias="schema")
    draft: Transcript

    @classmethod
    def of(cls, segment: Segment) -> Draft:
        """The draft a segment carries, without its audio."""
        if segment.draft is None:
            raise ValueError("segment has no draft")
        return cls(**segment.header(), draft=segment.draft)


class Frame(_Model):
    """A camera frame captured on a device (agent → bridge → ``edgecap.frames``)."""

    schema_: Literal["edgecap.frame.v1"] = Field(default="edgecap.frame.v1", alias="schema")
    agent_id: AgentId
    segment_id: SegmentId = Field(description="Id of the frame, unique like a segment id.")
    seq: Seq
    captured_at: UnixTime
    image: Image


class CloudTranscript(SegmentHeader):
    """A cloud worker's transcript of a segment (worker → ``edgecap.transcripts``)."""

    schema_: Literal["edgecap.transcript.v1"] = Field(default="edgecap.transcript.v1", alias="schema")
    transcript: Transcript
    worker: str = Field(description="Which worker instance produced it.")


class Final(SegmentHeader):
    """The reconciled caption of a segment (reconciler → ``edgecap.finals`` → device)."""

    schema_: Literal["edgecap.final.v1"] = Field(default="edgecap.final.v1", alias="schema")
    text: str
    source: Literal["cloud", "edge"] = Field(description="Whose text won.")
    version: int = Field(ge=1, description="Caption version; the edge draft is version 1.")
    transcript: Transcript
    draft_text: str | None = Field(default=None, description="The edge draft it replaces.")


class Rejection(_Model):
    """One segment the bridge refused, and why (in a :class:`Receipt`)."""

    segment_id: SegmentId
    reason: Reason
    detail: str = ""


class Receipt(_Model):
    """The bridge's word that segments are durably in Kafka, or refused (bridge → agent)."""

    schema_: Literal["edgecap.receipt.v1"] = Field(default="edgecap.receipt.v1", alias="schema")
    agent_id: AgentId
    accepted: list[SegmentId] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)
    issued_at: UnixTime


class Status(_Model):
    """An agent's retained status and heartbeat (also its MQTT last will, with online=false)."""

    schema_: Literal["edgecap.status.v1"] = Field(default="edgecap.status.v1", alias="schema")
    agent_id: AgentId
    online: bool
    at: UnixTime
    queue_depth: int = Field(default=0, ge=0)
    oldest_age_s: float = Field(default=0.0, ge=0)
    uptime_s: float | None = Field(default=None, ge=0, description="Seconds since the agent started.")
    cpu_percent: float | None = Field(default=None, ge=0, description="CPU use since the last status, % of one core.")
    rss_mb: float | None = Field(default=None, ge=0, description="Resident memory of the agent in MiB.")
    asr_rtf: float | None = Field(default=None, ge=0, description="Real-time factor of recent local transcriptions.")
    quota_full: bool = Field(default=False, description="The outbox quota is reached and its policy applies.")
    dropped_segments: int = Field(
        default=0, ge=0, description="Segments whose audio the quota policy dropped, or that it refused."
    )
    config_version: int | None = Field(
        default=None, ge=1, description="Version of the last configuration the agent applied (None: none yet)."
    )
    muted: bool = Field(default=False, description="A remote configuration muted capture (privacy mute).")
    input_done: bool = Field(
        default=False,
        description="The agent's input (a file, stdin) has ended and all of it is captioned; a microphone never ends.",
    )


class AgentConfig(_Model):
    """Settings an operator changes on a running agent (``edgecap config set`` → ``edgecap.config``
    → the agent's retained config topic). Every setting is optional: None leaves it as it is."""

    schema_: Literal["edgecap.agent_config.v1"] = Field(default="edgecap.agent_config.v1", alias="schema")
    agent_id: AgentId
    version: int = Field(
        ge=1, description="Applied only if greater than the last applied version; stale and replayed ones are ignored."
    )
    issued_at: UnixTime
    muted: bool | None = Field(
        default=None, description="Privacy mute: capture runs, audio is discarded before the VAD, nothing is sent."
    )
    heartbeat_s: float | None = Field(default=None, gt=0, le=3600, description="Status heartbeat interval in seconds.")
    vad_aggressiveness: int | None = Field(
        default=None, ge=0, le=3, description="webrtcvad mode 0-3 (the silero engine ignores it)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        default=None, description="Level of the agent's root logger."
    )

    def settings(self) -> dict[str, Any]:
        """The settings this message changes: those that are not None."""
        return {name: getattr(self, name) for name in CONFIG_SETTINGS if getattr(self, name) is not None}


CONFIG_SETTINGS = ("muted", "heartbeat_s", "vad_aggressiveness", "log_level")  # AgentConfig's optional settings


class DeadLetter(_Model):
    """A refused input with the reason (bridge or worker → ``edgecap.deadletter``)."""

    schema_: Literal["edgecap.deadletter.v1"] = Field(default="edgecap.deadletter.v1", alias="schema")
    reason: Reason
    detail: str
    source: str = Field(description="Where it came from: an MQTT or Kafka topic.")
    agent_id: str | None = Field(default=None, description="Claimed sender, if one could be read.")
    received_at: UnixTime
    payload: Base64Bytes = Field(description="The refused bytes (possibly truncated).")
    truncated: bool = False


Message = Annotated[
    Segment | Draft | Frame | CloudTranscript | Final | Receipt | Status | AgentConfig | DeadLetter,
    Field(discriminator="schema_"),
]
MESSAGE_TYPES: tuple[type[_Model], ...] = (
    Segment,
    Draft,
    Frame,
    CloudTranscript,
    Final,
    Receipt,
    Status,
    AgentConfig,
    DeadLetter,
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
T = TypeVar("T", bound=_Model)


def encode(message: _Model) -> bytes:
    """The wire bytes of a message."""
    return message.model_dump_json(by_alias=True).encode("utf-8")


@overload
def decode(raw: bytes, expect: type[T], *, max_bytes: int = ...) -> T: ...
@overload
def decode(raw: bytes, expect: None = None, *, max_bytes: int = ...) -> Any: ...
def decode(raw: bytes, expect: type[T] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parse wire bytes into a message, or raise :class:`DecodeError` with a reason.

    ``expect`` narrows the accepted type (``decode(raw, Segment)``).
    """
    if len(raw) > max_bytes:
        raise DecodeError(Reason.TOO_LARGE, f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        message = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        kinds = {e["type"] for e in errors}
        not_object = any(e["type"] == "dict_type" and not e["loc"] for e in errors)  # "x", 5, [], null
        if "json_invalid" in kinds or "json_type" in kinds or not_object:
            raise DecodeError(Reason.BAD_JSON, "not a JSON object") from exc
        if kinds & {"union_tag_invalid", "union_tag_not_found", "model_attributes_type"}:
            raise DecodeError(Reason.UNKNOWN_SCHEMA, "missing or unknown 'schema'") from exc
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        raise DecodeError(Reason.INVALID, f"{where}: {first['msg']}") from exc
    if expect is not None and not isinstance(message, expect):
        raise DecodeError(
            Reason.UNKNOWN_SCHEMA,
            f"expected {expect.model_fields['schema_'].default}, got {message.schema_}",
        )
    return message


def json_schema() -> dict[str, Any]:
    """The JSON Schema document of every wire message (committed under ``contracts/schema``)."""
    schema = _ADAPTER.json_schema(by_alias=True, ref_template="#/$defs/{model}")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "edgecap-v1.schema.json"
    schema["title"] = "edgecap wire messages, version 1"
    return schema
