"""The terminal view of captions.

On a terminal (a TTY) the last few captions are redrawn in place with ANSI escapes: drafts dim and
italic, finals in normal type, and a status line under them when the agent gives one. Anywhere
else (a log file, a pipe, the demo) each draft and final is one plain appended line.
"""

from __future__ import annotations

import logging
import shutil
import textwrap
from collections import OrderedDict
from typing import TextIO

from contracts.subtitles import one_line
from edge_agent.captions.caption import Caption

log = logging.getLogger(__name__)

DRAFT_STYLE = "\x1b[2;3m"  # dim, italic
STATUS_STYLE = "\x1b[7m"  # reverse video
RESET = "\x1b[0m"
CLEAR_LINE = "\x1b[2K"
CLEAR_BELOW = "\x1b[J"


def clock(caption: Caption, origin: float) -> str:
    """``[hh:mm:ss]`` of the caption's start, from the session origin."""
    total = max(0, int(caption.started_at - origin))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"[{h:02d}:{m:02d}:{s:02d}]"


class View:
    """Where captions are shown; a broken stream turns the view off instead of failing the agent."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def show(self, caption: Caption, kind: str, origin: float) -> None:
        raise NotImplementedError

    def status(self, text: str) -> None:
        """Plain output has no status line."""

    def close(self) -> None:
        """Nothing to undo."""

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # closed pipe or stream
            self.broken = True
            log.warning("terminal view off: %s", exc)


class PlainView(View):
    """``[hh:mm:ss] (draft) text`` and ``[hh:mm:ss] (final) text``, appended."""

    def show(self, caption: Caption, kind: str, origin: float) -> None:
        self._write(f"{clock(caption, origin)} ({kind:5}) {one_line(caption.text)}\n")


class LiveView(View):
    """The last ``lines`` captions and a status line, redrawn in place under the cursor."""

    def __init__(self, stream: TextIO, lines: int = 8) -> None:
        super().__init__(stream)
        self.lines = max(1, lines)
        self._shown: OrderedDict[str, tuple[str, str, bool]] = OrderedDict()
        self._status = ""
        self._rows = 0  # rows drawn last time, the cursor sits just below them

    def show(self, caption: Caption, kind: str, origin: float) -> None:
        if kind == "final" and caption.segment_id not in self._shown:
            return  # scrolled out of the view already; the files have it
        self._shown[caption.segment_id] = (clock(caption, origin), one_line(caption.text), kind == "final")
        while len(self._shown) > self.lines:
            self._shown.popitem(last=False)
        self._redraw()

    def status(self, text: str) -> None:
        self._status = one_line(text)
        self._redraw()

    def close(self) -> None:
        self._write(RESET)

    def _redraw(self) -> None:
        size = shutil.get_terminal_size((80, 24))
        width = max(20, size.columns - 1)  # never touch the last column: no automatic wrap
        rows: list[str] = []
        for label, text, final in self._shown.values():
            style = "" if final else DRAFT_STYLE
            for row in textwrap.wrap(f"{label} {text}", width, subsequent_indent=" " * 11) or [label]:
                rows.append(f"{CLEAR_LINE}{style}{row}{RESET if style else ''}")
        rows = rows[-max(1, size.lines - 2):]  # the region must fit the screen to be redrawn
        if self._status:
            rows.append(f"{CLEAR_LINE}{STATUS_STYLE}{self._status[:width]}{RESET}")
        up = f"\x1b[{self._rows}A" if self._rows else ""
        self._write(f"\r{up}" + "".join(f"{row}\n" for row in rows) + CLEAR_BELOW)
        self._rows = len(rows)
