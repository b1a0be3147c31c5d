"""Identifiers: time-ordered segment ids (UUIDv7 layout, RFC 9562)."""

from __future__ import annotations

import os
import time
import uuid


def new_segment_id() -> str:
    """A new unique id whose text sorts by creation time (UUIDv7), e.g. for a segment or frame."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
