"""Typed errors raised when bytes on the wire are not a valid edgecap message."""

from __future__ import annotations

from enum import StrEnum

from contracts.bounds import MAX_DETAIL_CHARS, clip


class Reason(StrEnum):
    """Why a message was refused; the same codes appear in dead-letter records and receipts."""

    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID = "invalid"
    BAD_AUDIO = "bad_audio"
    BAD_IMAGE = "bad_image"
    """An image that is not the JPEG it declares: not an image, another format, truncated, other dimensions."""
    SPOOFED_AGENT = "spoofed_agent"
    KAFKA_REFUSED = "kafka_refused"
    """Kafka (or its client) refused the record for good: authorization, an invalid record, a broker
    policy. Retrying cannot help; the detail names Kafka's error. A record over the limit is ``too_large``."""
    POISON = "poison"
    """A worker process died every time it had this record in hand (``max_attempts`` times, counted
    durably): dead-lettered so that the records behind it flow."""


class DecodeError(ValueError):
    """Raised by :func:`contracts.decode` for anything that is not a valid message.

    ``reason`` is a stable machine code, ``detail`` a human sentence for the log, cut to what a
    receipt's rejection and a dead letter hold (:data:`~contracts.bounds.MAX_DETAIL_CHARS`).
    A value beyond one of the limits of :mod:`contracts.bounds` is :attr:`Reason.INVALID` too: the
    detail names the field and the limit.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        detail = clip(detail, MAX_DETAIL_CHARS)
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
