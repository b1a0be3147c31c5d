"""The wire messages of edgecap.

Every message is one JSON object whose ``schema`` field names its type and version
(``edgecap.segment.v1`` …). Binary payloads (audio, JPEG) are base64 strings. MQTT and Kafka
carry exactly the bytes :func:`encode` produces, so a component in another language needs only
``contracts/schema/edgecap-v1.schema.json``.

Every field is bounded (:mod:`contracts.bounds`: 64-bit integers, a time window, lengths of texts
and lists, no NUL in texts), so that whatever decodes can be stored; :func:`decode` refuses the
rest as :attr:`~contracts.Reason.INVALID`, naming the field and the limit.
"""

from __future__ import annotations

import binascii
import time
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from contracts import bounds
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
Seq = Annotated[
    int, Field(ge=0, le=bounds.MAX_INT, description="Per-agent, strictly increasing sequence number (signed 64-bit).")
]
Count = Annotated[int, Field(ge=0, le=bounds.MAX_INT)]
Version = Annotated[int, Field(ge=1, le=bounds.MAX_INT)]


def _not_in_the_future(value: float) -> float:
    """A time at most :data:`~contracts.bounds.FUTURE_MARGIN_S` past this process's clock."""
    now = time.time()
    if value > now + bounds.FUTURE_MARGIN_S:
        raise ValueError(f"{value} is more than {bounds.FUTURE_MARGIN_S:.0f} s past the receiver's clock ({now:.0f})")
    return value


TIME_WINDOW = (
    f"Not before {bounds.EARLIEST_TIME:.0f} (the epoch) nor more than {bounds.FUTURE_MARGIN_S:.0f} s "
    "past the receiver's clock."
)
UnixTime = Annotated[
    float,
    Field(ge=bounds.EARLIEST_TIME, description=f"Seconds since the Unix epoch (UTC). {TIME_WINDOW}"),
    AfterValidator(_not_in_the_future),
]


def _text(max_chars: int) -> Any:
    """Free text of at most ``max_chars`` characters, without NUL (PostgreSQL's text cannot hold it)."""
    return StringConstraints(max_length=max_chars, pattern=bounds.NO_NUL)


def when(description: str) -> str:
    """A time field's description, with the window every time lies in (for the JSON schema)."""
    return f"{description} {TIME_WINDOW}"


Text = Annotated[str, _text(bounds.MAX_TEXT_CHARS)]
Name = Annotated[str, _text(bounds.MAX_NAME_CHARS)]
Detail = Annotated[str, _text(bounds.MAX_DETAIL_CHARS)]


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

    word: Annotated[str, _text(bounds.MAX_WORD_CHARS)]
    start: float
    end: float
    probability: float | None = None


class TranscriptSegment(_Model):
    """A span of a transcript, times in seconds from the start of the audio segment."""

    start: float
    end: float
    text: Text
    words: list[Word] = Field(default_factory=list, max_length=bounds.MAX_WORDS)


class Quality(_Model):
    """Whisper's own signals on a transcript, those its temperature fallback checks: a compression
    ratio (text bytes over their gzip) above 2.4 means repetition, an average token
    log-probability below -1 an unsure decode, a high no-speech probability with a low
    log-probability silence taken for speech."""

    avg_logprob: float = Field(ge=-1e4, le=0, description="Mean log-probability of the generated tokens.")
    no_speech_prob: float = Field(ge=0, le=1, description="Probability of the no-speech token at the start.")
    compression_ratio: float = Field(ge=0, le=1e4, description="Bytes of the text over bytes of its gzip.")


class Transcript(_Model):
    """Text of one audio segment by one model."""

    text: Text
    model_id: Name = Field(description="Which model produced this text, e.g. 'whisper-tiny.en-int8-onnx'.")
    language: Annotated[str, _text(bounds.MAX_LANGUAGE_CHARS)] | None = Field(
        default=None, description="Language tag of the text, e.g. 'en'."
    )
    segments: list[TranscriptSegment] = Field(default_factory=list, max_length=bounds.MAX_SPANS)
    produced_at: UnixTime = Field(description=when("When the text was ready."))
    quality: Quality | None = Field(default=None, description="Whisper's quality signals, where the engine gives them.")


# --- payloads ---------------------------------------------------------------------------

AudioCodec = Literal["opus", "flac", "pcm_s16le"]
"""How a segment's audio is encoded (:data:`contracts.bounds.AUDIO_CODECS`)."""


class Audio(_Model):
    """Mono or stereo audio: Ogg Opus (what agents send by default), FLAC, or raw PCM16.

    ``samples`` (per channel) says how long compressed audio is, so that a receiver (the bridge's
    length check, a duration anywhere) never has to decode it; a producer that lies about it is
    caught where the audio is decoded (:mod:`runtime.audiocodec` checks the count). Raw PCM16 needs
    no ``samples``: its length is that of the data, and if given it must agree.
    """

    codec: AudioCodec = Field(
        default="pcm_s16le",
        description="opus (Ogg Opus), flac, or pcm_s16le (raw signed 16-bit little-endian, interleaved).",
    )
    sample_rate: int = Field(
        ge=bounds.SAMPLE_RATES_HZ[0],
        le=bounds.SAMPLE_RATES_HZ[1],
        description=f"Samples per second; opus only at {', '.join(map(str, bounds.OPUS_SAMPLE_RATES_HZ))}.",
    )
    channels: int = Field(default=1, ge=1, le=bounds.MAX_CHANNELS)
    samples: int | None = Field(
        default=None,
        ge=0,
        le=bounds.MAX_AUDIO_SAMPLES,
        validate_default=True,
        description="Samples per channel: required for opus and flac; for pcm_s16le optional and equal to the data's.",
    )
    data: Base64Bytes

    # field validators (not one for the model) so that a refusal names the field: audio.sample_rate …
    @field_validator("sample_rate")
    @classmethod
    def _opus_rate(cls, rate: int, info: ValidationInfo) -> int:
        if info.data.get("codec") == "opus" and rate not in bounds.OPUS_SAMPLE_RATES_HZ:
            raise ValueError(f"opus has no sample rate {rate} (only {bounds.OPUS_SAMPLE_RATES_HZ})")
        return rate

    @field_validator("samples")
    @classmethod
    def _samples_of_compressed_audio(cls, samples: int | None, info: ValidationInfo) -> int | None:
        codec = info.data.get("codec")
        if samples is None and codec in ("opus", "flac"):
            raise ValueError(f"{codec} audio needs samples (per channel)")
        return samples

    @model_validator(mode="after")
    def _whole_frames(self) -> Audio:
        if self.codec == "pcm_s16le":
            if len(self.data) % (2 * self.channels):
                raise ValueError("pcm_s16le data is not a whole number of frames")
            frames = len(self.data) // (2 * self.channels)
            if self.samples is not None and self.samples != frames:
                raise ValueError(f"samples ({self.samples}) differs from the pcm_s16le data's {frames}")
        return self

    @property
    def frames(self) -> int:
        """Samples per channel: ``samples``, or for PCM16 without it, the data's."""
        return self.samples if self.samples is not None else len(self.data) // (2 * self.channels)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


class Image(_Model):
    """An encoded still image."""

    codec: Literal["jpeg"] = "jpeg"
    width: int = Field(ge=1, le=bounds.MAX_IMAGE_SIDE)
    height: int = Field(ge=1, le=bounds.MAX_IMAGE_SIDE)
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
    started_at: UnixTime = Field(description=when("Capture time of the first sample."))
    ended_at: UnixTime = Field(description=when("Capture time just after the last sample."))

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


Side = Annotated[int, Field(ge=0, le=bounds.MAX_IMAGE_SIDE)]
Extent = Annotated[int, Field(ge=1, le=bounds.MAX_IMAGE_SIDE)]
Coordinate = Annotated[float, Field(ge=0, le=bounds.MAX_IMAGE_SIDE)]


class Region(_Model):
    """A rectangle of a frame, in its pixels: top-left corner and size."""

    x: Side
    y: Side
    width: Extent
    height: Extent


def _regions_inside(regions: list[Region], image: Image) -> list[Region]:
    for k, r in enumerate(regions):
        if r.x + r.width > image.width or r.y + r.height > image.height:
            raise ValueError(f"region {k} ({r.x},{r.y} {r.width}x{r.height}) reaches outside the "
                             f"{image.width}x{image.height} image")  # fmt: skip
    return regions


class Frame(_Model):
    """A camera frame captured on a device (agent → bridge → ``edgecap.frames``)."""

    schema_: Literal["edgecap.frame.v1"] = Field(default="edgecap.frame.v1", alias="schema")
    agent_id: AgentId
    segment_id: SegmentId = Field(description="Id of the frame, unique like a segment id.")
    seq: Seq
    captured_at: UnixTime = Field(description=when("Capture time of the frame."))
    image: Image
    regions: list[Region] = Field(
        default_factory=list,
        max_length=bounds.MAX_REGIONS,
        description="Where the device saw motion: the detector looks there; empty: the whole frame.",
    )
    summary: bool = Field(False, description="The device wants the detections back on its detections topic.")

    @model_validator(mode="after")
    def _inside(self) -> Frame:
        _regions_inside(self.regions, self.image)
        return self


class Detection(_Model):
    """One object found in a frame: its class, score and box in the frame's pixels."""

    label: Name
    class_id: Annotated[int, Field(ge=0, le=bounds.MAX_INT)]
    score: float = Field(ge=0, le=1)
    x1: Coordinate
    y1: Coordinate
    x2: Coordinate
    y2: Coordinate


class Detections(_Model):
    """What the detector found in a frame (detect worker → ``edgecap.detections``): one per frame."""

    schema_: Literal["edgecap.detections.v1"] = Field(default="edgecap.detections.v1", alias="schema")
    agent_id: AgentId
    segment_id: SegmentId = Field(description="Id of the frame.")
    seq: Seq
    captured_at: UnixTime = Field(description=when("Capture time of the frame."))
    width: Extent = Field(description="The frame's width in pixels.")
    height: Extent = Field(description="The frame's height in pixels.")
    regions: list[Region] = Field(
        default_factory=list, max_length=bounds.MAX_REGIONS, description="Where it looked; empty: the whole frame."
    )
    boxes: list[Detection] = Field(default_factory=list, max_length=bounds.MAX_BOXES)
    model_id: Name
    worker: Name = Field(description="Which worker instance produced it.")
    detected_at: UnixTime = Field(description=when("When the detector finished."))
    summary: bool = Field(False, description="The device asked for it: the bridge sends it down to the device.")


class CloudTranscript(SegmentHeader):
    """A cloud worker's transcript of a segment (worker → ``edgecap.transcripts``)."""

    schema_: Literal["edgecap.transcript.v1"] = Field(default="edgecap.transcript.v1", alias="schema")
    transcript: Transcript
    worker: Name = Field(description="Which worker instance produced it.")


FinalReason = Literal["cloud", "no_draft", "cloud_empty", "compression_ratio", "low_logprob", "word_count", "deadline"]
"""Why a final caption has its text. The cloud text: ``cloud`` (it passed every check against the
draft), ``no_draft`` (no draft was known to weigh it against). The draft stands (source ``edge``)
because the cloud result failed one of Whisper's own checks: ``cloud_empty`` (no words while the
draft has some), ``compression_ratio`` (repetition), ``low_logprob`` (an unsure decode),
``word_count`` (far more or fewer words than the draft); or because no cloud transcript came in
time: ``deadline`` (a later transcript then upgrades it as the next version)."""


class Final(SegmentHeader):
    """The reconciled caption of a segment (reconciler → ``edgecap.finals`` → device)."""

    schema_: Literal["edgecap.final.v1"] = Field(default="edgecap.final.v1", alias="schema")
    text: Text
    source: Literal["cloud", "edge"] = Field(description="Whose text won.")
    version: Version = Field(
        description="Caption version; the edge draft is version 1, the final 2, a cloud upgrade of a deadline final 3."
    )
    transcript: Transcript = Field(description="The cloud transcript weighed (a deadline final: the edge draft).")
    draft_text: Text | None = Field(default=None, description="The edge draft it replaces.")
    reason: FinalReason | None = Field(
        default=None, description="Why this text won (None: a final made before reasons existed)."
    )


class Rejection(_Model):
    """One segment the bridge refused, and why (in a :class:`Receipt`)."""

    segment_id: SegmentId
    reason: Reason
    detail: Detail = ""


class Receipt(_Model):
    """The bridge's word that segments are durably in Kafka, or refused (bridge → agent)."""

    schema_: Literal["edgecap.receipt.v1"] = Field(default="edgecap.receipt.v1", alias="schema")
    agent_id: AgentId
    accepted: list[SegmentId] = Field(default_factory=list, max_length=bounds.MAX_RECEIPT_IDS)
    rejected: list[Rejection] = Field(default_factory=list, max_length=bounds.MAX_RECEIPT_IDS)
    issued_at: UnixTime = Field(description=when("When the bridge sent it."))


class Status(_Model):
    """An agent's retained status and heartbeat (also its MQTT last will, with online=false)."""

    schema_: Literal["edgecap.status.v1"] = Field(default="edgecap.status.v1", alias="schema")
    agent_id: AgentId
    online: bool
    at: UnixTime = Field(description=when("When the agent sent it."))
    queue_depth: Count = Field(default=0, description="Entries waiting in the outbox.")
    oldest_age_s: float = Field(default=0.0, ge=0)
    uptime_s: float | None = Field(default=None, ge=0, description="Seconds since the agent started.")
    cpu_percent: float | None = Field(default=None, ge=0, description="CPU use since the last status, % of one core.")
    rss_mb: float | None = Field(default=None, ge=0, description="Resident memory of the agent in MiB.")
    asr_rtf: float | None = Field(default=None, ge=0, description="Real-time factor of recent local transcriptions.")
    quota_full: bool = Field(default=False, description="The outbox quota is reached and its policy applies.")
    dropped_segments: Count = Field(
        default=0, description="Segments whose audio the quota policy dropped, or that it refused or deleted."
    )
    quarantined: Count = Field(
        default=0, description="Segments the bridge refused, kept on the device and not sent again until resent."
    )
    quarantined_total: Count = Field(default=0, description="Segments ever quarantined by this device's outbox.")
    append_failed: Count = Field(
        default=0, description="Segments the device's disk refused to store (full, I/O error) since the agent started."
    )
    config_version: Version | None = Field(
        default=None, description="Version of the last configuration the agent applied (None: none yet)."
    )
    muted: bool = Field(default=False, description="A remote configuration muted capture (privacy mute).")
    input_done: bool = Field(
        default=False,
        description="The agent's input (a file, stdin) has ended and all of it is captioned; a microphone never ends.",
    )
    site: Annotated[str, _text(bounds.MAX_SITE_CHARS)] | None = Field(
        default=None, description="Where the device is (its configured site), for views of many sites."
    )


class AgentConfig(_Model):
    """Settings an operator changes on a running agent (``edgecap config set`` → ``edgecap.config``
    → the agent's retained config topic). Every setting is optional: None leaves it as it is."""

    schema_: Literal["edgecap.agent_config.v1"] = Field(default="edgecap.agent_config.v1", alias="schema")
    agent_id: AgentId
    version: Version = Field(
        description="Applied only if greater than the last applied version; stale and replayed ones are ignored."
    )
    issued_at: UnixTime = Field(description=when("When the operator issued it."))
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
    detail: Detail
    source: Annotated[str, _text(bounds.MAX_SOURCE_CHARS)] = Field(
        description="Where it came from: an MQTT or Kafka topic."
    )
    agent_id: Annotated[str, _text(bounds.MAX_SOURCE_CHARS)] | None = Field(
        default=None, description="Claimed sender, if one could be read (not necessarily a valid agent id)."
    )
    received_at: UnixTime = Field(description=when("When the refusing service received it."))
    payload: Base64Bytes = Field(description="The refused bytes (possibly truncated).")
    truncated: bool = False


Message = Annotated[
    Segment | Draft | Frame | CloudTranscript | Final | Detections | Receipt | Status | AgentConfig | DeadLetter,
    Field(discriminator="schema_"),
]
MESSAGE_TYPES: tuple[type[_Model], ...] = (
    Segment,
    Draft,
    Frame,
    CloudTranscript,
    Final,
    Detections,
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
