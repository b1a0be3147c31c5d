"""The caption files of one directory, each rewritten atomically (temp file, fsync, rename).

``captions.srt``, ``captions.vtt`` and ``captions.jsonl`` always hold every caption in its
current version, so a final replaces its draft in place in all three. Each caption's SRT block,
VTT cue and JSON line are rendered once and cached until that caption changes, so a rewrite of
a file with thousands of captions only joins cached strings; how often rewrites happen is the
sink's business. ``captions.events.jsonl`` is an append-only log of every change, for tools.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from contracts.subtitles import VTT_HEADER, srt_body, vtt_cue
from edge_agent.captions.caption import Caption

log = logging.getLogger(__name__)


class CaptionError(RuntimeError):
    """The caption directory cannot be used; the message says which and why."""


def write_atomically(path: Path, parts: Iterable[str]) -> None:
    """Replace ``path`` with ``parts`` so that a reader, or a crash, sees the old file or the new one.
    On failure (a full disk: ENOSPC) the old file stays and the partial temp file is removed, so
    it holds no space; the OSError goes to the caller."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(parts)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CaptionFiles:
    """Renders and writes the caption files of ``directory``; not thread-safe (the sink locks)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.srt_path = self.dir / "captions.srt"
        self.vtt_path = self.dir / "captions.vtt"
        self.jsonl_path = self.dir / "captions.jsonl"
        self.events_path = self.dir / "captions.events.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".captions.probe"
            probe.write_bytes(b"")
            probe.unlink()
            self._events: TextIO | None = self.events_path.open("a", encoding="utf-8")
        except OSError as exc:
            raise CaptionError(f"caption directory {self.dir} is not writable: {exc}") from exc
        self._closed = False
        # segment id -> (SRT block without its number, VTT cue, JSON line); dropped when it changes
        self._rendered: dict[str, tuple[str | None, str | None, str]] = {}

    def load(self) -> tuple[list[Caption], int]:
        """Captions from an earlier run's ``captions.jsonl``, and how many lines were unreadable."""
        if not self.jsonl_path.exists():
            return [], 0
        captions: list[Caption] = []
        bad = 0
        try:
            lines = self.jsonl_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise CaptionError(f"cannot read {self.jsonl_path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                captions.append(Caption.from_record(json.loads(line)))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                bad += 1
                log.warning("%s line %d skipped: %s", self.jsonl_path, number, exc)
        return captions, bad

    def changed(self, segment_id: str) -> None:
        self._rendered.pop(segment_id, None)

    def _render(self, caption: Caption, origin: float) -> tuple[str | None, str | None, str]:
        rendered = self._rendered.get(caption.segment_id)
        if rendered is None:
            line = json.dumps(caption.to_record(), ensure_ascii=False) + "\n"
            rendered = (srt_body(caption, origin), vtt_cue(caption, origin), line)
            self._rendered[caption.segment_id] = rendered
        return rendered

    def write(self, captions: Iterable[Caption], origin: float) -> None:
        """Rewrite the three files with ``captions`` in time order; OSError when the disk refuses."""
        ordered = sorted(captions, key=lambda c: (c.started_at, c.seq))
        rendered = [self._render(c, origin) for c in ordered]
        srt_bodies = [r[0] for r in rendered if r[0] is not None]
        write_atomically(self.srt_path, (f"{n}\n{body}" for n, body in enumerate(srt_bodies, 1)))
        write_atomically(self.vtt_path, [VTT_HEADER, *(r[1] for r in rendered if r[1] is not None)])
        write_atomically(self.jsonl_path, (r[2] for r in rendered))
        _fsync_dir(self.dir)

    def append_event(self, event: dict[str, Any]) -> None:
        """One line in ``captions.events.jsonl`` (flushed, not fsynced: the JSONL file is the record).

        When the disk refuses it (ENOSPC) the line is dropped, the file closed and the OSError
        raised (the sink counts it); the next event reopens the file, so no half-written buffer
        is carried over into later lines."""
        if self._closed:
            return
        try:
            if self._events is None:
                self._events = self.events_path.open("a", encoding="utf-8")
            self._events.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._events.flush()
        except OSError:
            self._drop_events_file()
            raise

    def _drop_events_file(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            try:
                events.close()  # flushes what is buffered: fails again on a full disk, still closes
            except OSError as exc:
                log.debug("closing %s: %s", self.events_path, exc)

    def close(self) -> None:
        self._closed = True
        self._drop_events_file()
