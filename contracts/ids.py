"""Identifiers: what an agent id and a segment id may be, and time-ordered new segment ids (UUIDv7,
RFC 9562). One definition for the wire messages (:mod:`contracts.messages`), the bridge (ids read
from refused payloads) and the operator commands (device accounts)."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import TypeGuard

AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A device identity: also its MQTT user name, certificate common name and topic segment."""
SEGMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
"""The id of a captured item (segment or frame), stable across retries."""

_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_SEGMENT_ID = re.compile(SEGMENT_ID_PATTERN)


def is_agent_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid agent id."""
    return isinstance(value, str) and _AGENT_ID.fullmatch(value) is not None


def is_segment_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid segment id."""
    return isinstance(value, str) and _SEGMENT_ID.fullmatch(value) is not None


def new_segment_id() -> str:
    """A new unique id whose text sorts by creation time (UUIDv7), e.g. for a segment or frame."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
