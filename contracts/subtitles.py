"""SRT and WebVTT rendering: times, cue blocks and the escaping each format needs.

One implementation for the device's caption files (``edge_agent.captions``) and the cloud's
export (``GET /api/export``): a cue is anything with a ``segment_id``, ``started_at``,
``ended_at`` (Unix seconds) and ``text``; times in a file run from ``origin``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol


class Caption(Protocol):
    """What a cue is made of."""

    @property
    def segment_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ended_at(self) -> float: ...
    @property
    def text(self) -> str: ...

VTT_HEADER = "WEBVTT\n\n"
_ARROWS = re.compile(r"-{2,}>")


def _hms(seconds: float) -> tuple[int, int, int, int]:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return h, m, s, ms


def srt_time(seconds: float) -> str:
    """``HH:MM:SS,mmm`` (negative times are clamped to zero)."""
    h, m, s, ms = _hms(seconds)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def vtt_time(seconds: float) -> str:
    """``HH:MM:SS.mmm`` (negative times are clamped to zero)."""
    h, m, s, ms = _hms(seconds)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def one_line(text: str) -> str:
    """Caption text on one line: blank lines would end a cue in both formats."""
    return " ".join(text.split())


def _span(caption: Caption, origin: float) -> tuple[float, float]:
    start = max(0.0, caption.started_at - origin)
    end = max(caption.ended_at - origin, start + 0.001)  # a cue must end after it starts
    return start, end


def srt_text(text: str) -> str:
    return _ARROWS.sub("->", one_line(text))  # a "-->" line reads as a timing line


def vtt_text(text: str) -> str:
    return one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def srt_body(caption: Caption, origin: float) -> str | None:
    """An SRT block without its number (numbers follow the order of the file); None when empty."""
    text = srt_text(caption.text)
    if not text:
        return None
    start, end = _span(caption, origin)
    return f"{srt_time(start)} --> {srt_time(end)}\n{text}\n\n"


def vtt_cue(caption: Caption, origin: float) -> str | None:
    """A WebVTT cue whose id is the segment id; None when the caption is empty."""
    text = vtt_text(caption.text)
    if not text:
        return None
    start, end = _span(caption, origin)
    return f"{caption.segment_id}\n{vtt_time(start)} --> {vtt_time(end)}\n{text}\n\n"


def srt_document(captions: Iterable[Caption], origin: float) -> str:
    """A whole SRT file: the non-empty captions numbered from 1, in the order given."""
    bodies = [b for b in (srt_body(c, origin) for c in captions) if b is not None]
    return "".join(f"{k}\n{body}" for k, body in enumerate(bodies, 1))


def vtt_document(captions: Iterable[Caption], origin: float) -> str:
    """A whole WebVTT file, each cue named by its segment id."""
    return VTT_HEADER + "".join(c for c in (vtt_cue(caption, origin) for caption in captions) if c is not None)
