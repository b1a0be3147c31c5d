"""What makes an uploaded segment, frame or status acceptable, and what can still be read from one that is not."""

from __future__ import annotations

import json
import re

from contracts import DecodeError, Frame, Reason, Segment, Status, decode, parse_mqtt_topic
from contracts.ids import is_segment_id
from contracts.topics import Up


class Refused(DecodeError):
    """An MQTT message the bridge will not forward: one that does not decode, or decodes and breaks a
    rule of the bridge (identity, sample rate, length, image). ``reason`` and ``detail`` are what its
    dead letter and the agent's receipt say."""


UPLINK_CHANNELS = (Up.SEGMENTS, Up.FRAMES, Up.STATUS)
_UPLINK = {c.value: c for c in UPLINK_CHANNELS}
JPEG_MAGIC = b"\xff\xd8\xff"


def topic_route(topic: str) -> tuple[str, Up]:
    """The agent id and channel of an uplink topic (segments, frames, status); :class:`Refused` for any other."""
    try:
        agent_id, channel = parse_mqtt_topic(topic)
    except ValueError as exc:
        raise Refused(Reason.INVALID, str(exc)) from exc
    up = _UPLINK.get(channel)
    if up is None:
        raise Refused(Reason.INVALID, f"unexpected channel {channel!r} on {topic!r}")
    return agent_id, up


def check_segment(raw: bytes, agent_id: str, *, max_bytes: int, sample_rates: list[int], max_audio_s: float) -> Segment:
    """Decode and check one uploaded segment sent on ``agent_id``'s topic, or raise :class:`Refused`.

    The whole message is decoded, audio included (SIMD base64: ~40 µs for 160 KiB); the bytes
    forwarded are ``raw``, never a re-encoding.
    """
    try:
        segment = decode(raw, Segment, max_bytes=max_bytes)
    except DecodeError as exc:
        reason = exc.reason
        if reason is Reason.INVALID and exc.detail.startswith("audio"):
            reason = Reason.BAD_AUDIO
        raise Refused(reason, exc.detail) from exc
    if segment.agent_id != agent_id:
        raise Refused(Reason.SPOOFED_AGENT, f"envelope agent_id {segment.agent_id!r} sent on the topic of {agent_id!r}")
    if segment.audio.sample_rate not in sample_rates:
        raise Refused(Reason.BAD_AUDIO, f"sample rate {segment.audio.sample_rate} Hz is not one of {sample_rates}")
    if segment.audio.duration_s > max_audio_s:
        raise Refused(Reason.BAD_AUDIO, f"audio lasts {segment.audio.duration_s:.2f} s, more than {max_audio_s:g} s")
    return segment


def check_status(raw: bytes, agent_id: str, *, max_bytes: int) -> Status:
    """Decode and check one agent status (a heartbeat or its last will) sent on ``agent_id``'s topic,
    or raise :class:`Refused`."""
    try:
        status = decode(raw, Status, max_bytes=max_bytes)
    except DecodeError as exc:
        raise Refused(exc.reason, exc.detail) from exc
    if status.agent_id != agent_id:
        raise Refused(Reason.SPOOFED_AGENT, f"status of {status.agent_id!r} sent on the topic of {agent_id!r}")
    return status


def check_frame(raw: bytes, agent_id: str, *, max_bytes: int, max_side: int, max_image_bytes: int) -> Frame:
    """Decode and check one uploaded camera frame sent on ``agent_id``'s topic, or raise :class:`Refused`."""
    try:
        frame = decode(raw, Frame, max_bytes=max_bytes)
    except DecodeError as exc:
        raise Refused(exc.reason, exc.detail) from exc
    if frame.agent_id != agent_id:
        raise Refused(Reason.SPOOFED_AGENT, f"envelope agent_id {frame.agent_id!r} sent on the topic of {agent_id!r}")
    image = frame.image
    if not image.data.startswith(JPEG_MAGIC):
        raise Refused(Reason.INVALID, f"image: data is not JPEG (starts {image.data[:3].hex(' ') or 'empty'})")
    if max(image.width, image.height) > max_side:
        raise Refused(Reason.INVALID, f"image: {image.width}x{image.height} exceeds {max_side} pixels a side")
    if len(image.data) > max_image_bytes:
        raise Refused(Reason.TOO_LARGE, f"image: {len(image.data)} JPEG bytes exceed {max_image_bytes}")
    return frame


_SEGMENT_ID_FIELD = re.compile(rb'"segment_id"\s*:\s*"([^"\\]{1,128})"')
_SCAN_BYTES = 4096


def readable_segment_id(raw: bytes, max_bytes: int) -> str | None:
    """The ``segment_id`` of a refused payload, if one can be read: a JSON parse (up to
    ``max_bytes``), else a scan of the first bytes (a truncated message still names its id)."""
    value: object = None
    try:
        obj = json.loads(raw) if len(raw) <= max_bytes else None
        value = obj.get("segment_id") if isinstance(obj, dict) else None
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        pass
    if value is None:
        found = _SEGMENT_ID_FIELD.search(raw[:_SCAN_BYTES])
        value = found.group(1).decode("ascii", "replace") if found else None
    return value if is_segment_id(value) else None
