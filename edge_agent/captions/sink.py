"""``CaptionSink``: every caption shown at once on the terminal and in the caption files.

A draft appears the moment the local model has it; the cloud's final for the same segment later
replaces it in place (terminal, SRT, WebVTT and JSONL), the draft staying in the JSONL record as
version 1. Captions survive a restart: the JSONL file is loaded back, so a final that arrives
after a crash still replaces the draft shown before it.

File rewrites are coalesced: when the files were not written in the last ``write_interval_s``
the change is written at once, in the caller; otherwise a timer writes every change of that
interval together (a burst of thousands of finals after a reconnect costs a few rewrites, not
thousands); 0 writes every change at once. The interval grows to 4x the last rewrite's duration so rewriting a very long
session's files never takes more than a fifth of the time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from contracts import Final, Transcript
from edge_agent.captions.caption import Caption, Version
from edge_agent.captions.files import CaptionFiles
from edge_agent.captions.terminal import LiveView, PlainView, View

log = logging.getLogger(__name__)

RETRY_WRITE_S = 5.0


class CaptionSink:
    """Terminal + SRT + WebVTT + JSONL captions of one agent; thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        terminal: bool = True,
        origin: float | None = None,
        stream: TextIO | None = None,
        live_lines: int = 8,
        write_interval_s: float = 0.5,
    ) -> None:
        self.files = CaptionFiles(directory)  # CaptionError when the directory is not writable
        self.dir = self.files.dir
        self.srt_path = self.files.srt_path
        self.vtt_path = self.files.vtt_path
        self.jsonl_path = self.files.jsonl_path
        self.events_path = self.files.events_path
        self.write_interval_s = write_interval_s
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._captions: dict[str, Caption] = {}
        loaded, bad = self.files.load()
        self.counters["bad_records"] += bad
        for caption in loaded:
            self._captions[caption.segment_id] = caption
        self.origin = origin
        if self.origin is None and loaded:
            self.origin = min(c.started_at for c in loaded)
        if loaded or bad:
            log.info("captions: %d loaded from %s (%d unreadable lines)", len(loaded), self.jsonl_path, bad)
        self.view: View | None = None
        if terminal:
            out = stream if stream is not None else sys.stdout
            self.view = LiveView(out, live_lines) if _isatty(out) else PlainView(out)
        self._dirty = False
        self._timer: threading.Timer | None = None
        self._next_write_at = 0.0
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._captions)

    def get(self, segment_id: str) -> Caption | None:
        with self._lock:
            return self._captions.get(segment_id)

    # --- what the agent calls ---------------------------------------------------------------

    def draft(self, segment_id: str, seq: int, started_at: float, ended_at: float, transcript: Transcript) -> None:
        """Show the edge draft of a segment; called again for the same segment, it updates the draft."""
        now = time.time()
        version = Version(1, "edge", transcript.text.strip(), transcript.model_id, transcript.produced_at)
        with self._lock:
            if self.origin is None:
                self.origin = started_at
            caption = self._captions.get(segment_id)
            if caption is None:
                caption = Caption(segment_id, seq, started_at, ended_at, now, [version])
                self._captions[segment_id] = caption
                self.counters["drafts"] += 1
            else:  # a longer or corrected draft: same version, new text; a final already shown stays
                caption.seq, caption.started_at, caption.ended_at = seq, started_at, ended_at
                caption.versions[0] = version
                self.counters["draft_updates"] += 1
            self.files.changed(segment_id)
            if not caption.is_final:
                self._show(caption, "draft")
            self._event("draft", caption, version)
            self._schedule_write()

    def final(self, final: Final) -> bool:
        """Replace a draft with the cloud's final caption.

        True when the segment is known here (the final is shown, or an equal or newer version
        already is); False, logged and counted, when this device never captioned it.
        """
        received_at = time.time()
        with self._lock:
            caption = self._captions.get(final.segment_id)
            if caption is None:
                self.counters["finals_unknown"] += 1
                log.warning("final v%d for segment %s (seq %d) that this device did not caption; ignored",
                            final.version, final.segment_id, final.seq)
                return False
            if final.version <= caption.version:
                duplicate = final.version == caption.version and final.text.strip() == caption.text
                self.counters["finals_duplicate" if duplicate else "finals_stale"] += 1
                log.log(logging.DEBUG if duplicate else logging.INFO,
                        "final v%d for segment %s ignored: v%d already shown",
                        final.version, final.segment_id, caption.version)
                return True
            version = Version(final.version, final.source, final.text.strip(), final.transcript.model_id,
                              final.transcript.produced_at, received_at)
            caption.versions.append(version)
            self.counters["finals"] += 1
            self.files.changed(caption.segment_id)
            self._show(caption, "final")
            self._event("final", caption, version)
            self._schedule_write()
        return True

    def status(self, text: str) -> None:
        """A status line under the live view (queue depth, online or not); plain output ignores it."""
        with self._lock:
            if self.view is not None:
                self.view.status(text)

    def flush(self) -> None:
        """Write pending changes to the files now."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._dirty:
                self._write()

    def close(self) -> None:
        """Write what is pending and release the files; later calls change nothing on disk."""
        with self._lock:
            if self._closed:
                return
            self.flush()
            self._closed = True
            if self._timer is not None:  # a retry after a failed write: give up, it was logged
                self._timer.cancel()
                self._timer = None
            if self.view is not None:
                self.view.close()
            self.files.close()
        log.info("captions closed: %s", dict(self.counters))

    # --- inside -----------------------------------------------------------------------------

    def _show(self, caption: Caption, kind: str) -> None:
        if self.view is not None:
            self.view.show(caption, kind, caption.started_at if self.origin is None else self.origin)

    def _event(self, event: str, caption: Caption, version: Version) -> None:
        record = {"event": event, "segment_id": caption.segment_id, "seq": caption.seq,
                  "started_at": caption.started_at, "ended_at": caption.ended_at,
                  "shown_at": caption.shown_at, **version.to_record()}
        try:
            self.files.append_event(record)
        except (OSError, ValueError) as exc:
            self.counters["write_errors"] += 1
            log.warning("cannot append to %s: %s", self.events_path, exc)

    def _schedule_write(self) -> None:
        self._dirty = True
        if self._closed or self._timer is not None:
            return  # closed: memory only; a timer is pending: it takes this change too
        delay = self._next_write_at - time.monotonic()
        if delay <= 0:
            self._write()
        else:
            self._start_timer(delay)

    def _start_timer(self, delay: float, *, retry: bool = False) -> None:
        # Not a daemon: a pending write still happens when the process exits without close().
        # A retry after a failed write is one, so a dead disk never keeps the process alive.
        self._timer = threading.Timer(delay, self._on_timer)
        self._timer.name = "captions-retry" if retry else "captions-write"
        self._timer.daemon = retry
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty and not self._closed:
                self._write()

    def _write(self) -> None:
        started = time.monotonic()
        try:
            self.files.write(self._captions.values(), self.origin or 0.0)
        except OSError as exc:
            self.counters["write_errors"] += 1
            log.error("cannot write captions to %s (kept in memory, retrying): %s", self.dir, exc)
            self._next_write_at = time.monotonic() + RETRY_WRITE_S
            if not self._closed and self._timer is None:
                self._start_timer(RETRY_WRITE_S, retry=True)
            return
        self._dirty = False
        took = time.monotonic() - started
        self.counters["writes"] += 1
        if self.write_interval_s > 0:
            self._next_write_at = time.monotonic() + max(self.write_interval_s, 4 * took)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
