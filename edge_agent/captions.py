"""Local captions: shown the moment a draft exists, whether or not a network does.

Outputs: a line on the terminal, ``captions.srt`` (rewritten atomically so a final caption replaces
its draft in place) and ``captions.jsonl`` (an append-only log of draft and final events, which
keeps the draft as the earlier version).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from contracts import Final, Transcript

log = logging.getLogger(__name__)


@dataclass
class Caption:
    segment_id: str
    seq: int
    started_at: float
    ended_at: float
    text: str
    version: int
    source: str


def srt_time(seconds: float) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


class CaptionSink:
    """Terminal + SRT + JSONL captions of one agent session; thread-safe."""

    def __init__(self, directory: Path, *, terminal: bool = True, origin: float | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.srt_path = self.dir / "captions.srt"
        self.jsonl_path = self.dir / "captions.jsonl"
        self.terminal = terminal
        self.origin = origin
        self._captions: dict[str, Caption] = {}
        self._lock = threading.Lock()

    def draft(self, segment_id: str, seq: int, started_at: float, ended_at: float, draft: Transcript) -> None:
        caption = Caption(segment_id, seq, started_at, ended_at, draft.text.strip(), 1, "edge")
        with self._lock:
            if self.origin is None:
                self.origin = started_at
            self._captions[segment_id] = caption
            self._log_event("draft", caption, model_id=draft.model_id, produced_at=draft.produced_at)
            self._write_srt()
        if self.terminal:
            self._show(caption, "draft")

    def final(self, final: Final) -> bool:
        """Replace a draft with the cloud's final caption; False if the segment is unknown here."""
        with self._lock:
            old = self._captions.get(final.segment_id)
            if old is None:
                log.info("final for segment %s which this session did not caption", final.segment_id)
                return False
            if old.version >= final.version:
                return True
            new = Caption(
                final.segment_id, final.seq, final.started_at, final.ended_at,
                final.text.strip(), final.version, final.source,
            )
            self._captions[final.segment_id] = new
            self._log_event("final", new, model_id=final.transcript.model_id, draft_text=old.text)
            self._write_srt()
        if self.terminal:
            self._show(new, "final")
        return True

    def _show(self, caption: Caption, kind: str) -> None:
        start = caption.started_at - (self.origin or caption.started_at)
        sys.stdout.write(f"[{srt_time(start)[:-4]}] ({kind:5}) {caption.text}\n")
        sys.stdout.flush()

    def _log_event(self, event: str, caption: Caption, **extra: object) -> None:
        record = {"event": event, **caption.__dict__, **extra}
        with self.jsonl_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _write_srt(self) -> None:
        origin = self.origin or 0.0
        blocks = []
        ordered = sorted(self._captions.values(), key=lambda c: c.started_at)
        for i, c in enumerate(ordered, 1):
            blocks.append(
                f"{i}\n{srt_time(c.started_at - origin)} --> {srt_time(c.ended_at - origin)}\n{c.text}\n"
            )
        tmp = self.srt_path.with_suffix(".srt.tmp")
        tmp.write_text("\n".join(blocks), encoding="utf-8")
        os.replace(tmp, self.srt_path)
