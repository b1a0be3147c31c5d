"""The live feed: every change of a segment (its draft, then its final) as a server-sent event.

``GET /api/events`` streams one ``segment`` event per new state of a segment (the row as
``/api/segments`` gives it), its id the change's time (``updated_at``). Browsers reconnect by
themselves and send the last id they saw (``Last-Event-ID``); the feed resumes from there, so a
reconnect misses nothing.

One reader per dashboard process (:class:`ChangeFeed`) reads the store's changes every ``poll_s``
and keeps the recent ones in memory; every open stream takes its events from there, filtered by
agent and site, so the store is read as often with one browser open as with a hundred. A stream
that starts (or resumes) before what memory holds, or falls behind it (a slow client), reads its own
way through the store first, then joins the shared changes. Each read starts :data:`LOOKBACK_S`
before its cursor, because writers on other connections (other reconcilers) may commit a change
stamped a little before one already seen; a state already sent on a stream is not sent again (a
row's state is its key and caption version), and a client applies an event idempotently anyway (the
row replaced in place). ``sse-starlette`` does the protocol (headers, a ping comment every 15 s,
the client's disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cloud.store import SegmentRow, Store

log = logging.getLogger(__name__)

LOOKBACK_S = 5.0
"""How far behind its cursor the feed reads again (a writer's clock and commit may lag that much)."""
KEEP_S = 30.0
"""How long the shared changes stay in memory: a stream this far behind reads the store itself."""
PING_S = 15
PAGE = 500

Key = tuple[str, str]


def _version(row: SegmentRow) -> int:
    final = row["final"]
    return int(final["version"]) if final else 1


def parse_cursor(last_event_id: str | None, since: float | None) -> float:
    """Where a stream starts: after the last event the client saw, else ``since``, else now."""
    if last_event_id:
        try:
            return float(last_event_id)
        except ValueError:
            log.warning("ignoring a Last-Event-ID that is not one of ours: %r", last_event_id[:80])
    return since if since is not None else time.time()


@dataclass(frozen=True)
class Change:
    """One new state of a segment, numbered in the order the shared reader found it."""

    number: int
    at: float  # the change's time (updated_at): the event id
    row: SegmentRow


class Stream:
    """What one client was sent: each segment's newest caption version and its change time."""

    def __init__(self, cursor: float, agent_id: str | None, site: str | None) -> None:
        self.cursor = cursor
        self.agent_id, self.site = agent_id, site
        self.sent: dict[Key, tuple[int, float]] = {}

    def wants(self, row: SegmentRow) -> bool:
        return (self.agent_id is None or row["agent_id"] == self.agent_id) and (
            self.site is None or row["site"] == self.site
        )

    def event(self, at: float, row: SegmentRow) -> dict[str, Any] | None:
        """The event for this state, or None if the client has it (or a newer one) already."""
        key = (row["agent_id"], row["segment_id"])
        version = _version(row)
        if key in self.sent and self.sent[key][0] >= version:
            return None
        self.sent[key] = (version, at)
        self.cursor = max(self.cursor, at)
        return {"event": "segment", "id": f"{at:.6f}", "data": json.dumps(row)}

    def forget_old(self) -> None:
        horizon = self.cursor - 2 * LOOKBACK_S  # what fell out of the lookback cannot come again
        for key in [k for k, (_, at) in self.sent.items() if at < horizon]:
            del self.sent[key]


class ChangeFeed:
    """The dashboard's one reader of the store's changes, shared by every open stream."""

    def __init__(self, store: Store, poll_s: float) -> None:
        self.store, self.poll_s = store, poll_s
        self.changes: deque[Change] = deque()
        self.numbered = 0  # the number the next change gets
        self.arrived = asyncio.Condition()
        self.streams = 0
        self.reads = 0  # store reads by the shared reader (the benchmark and tests look)
        self._reader: asyncio.Task[None] | None = None
        self._seen = Stream(time.time(), None, None)  # what the shared reader has taken in

    async def events(self, request: Request, cursor: float, agent_id: str | None,
                     site: str | None) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """The events of one stream from ``cursor`` on, until the client goes away."""
        stream = Stream(cursor, agent_id, site)
        self.streams += 1
        self._start_reader()
        try:
            position = self.numbered  # shared changes from here on; the store up to now, first
            for event in await self._catch_up(stream):
                yield event
            while not await request.is_disconnected():
                self._start_reader()  # again, if it stopped on an error
                oldest = self.changes[0].number if self.changes else self.numbered
                if position < oldest:  # fell behind what memory holds: read the store again
                    log.info("a live stream fell %d changes behind: reading the store", oldest - position)
                    position = self.numbered
                    for event in await self._catch_up(stream):
                        yield event
                upto, held = self.numbered, list(self.changes)  # together: the reader adds while we yield
                for change in held:
                    if change.number >= position and stream.wants(change.row):
                        shared = stream.event(change.at, change.row)
                        if shared is not None:
                            yield shared
                position = upto
                stream.forget_old()
                async with self.arrived:
                    if position == self.numbered:
                        try:
                            await asyncio.wait_for(self.arrived.wait(), timeout=1.0)
                        except TimeoutError:
                            pass  # look at the client again
        finally:
            self.streams -= 1

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="dashboard-change-feed")

    async def _catch_up(self, stream: Stream) -> list[dict[str, Any]]:
        """Everything the stream wants from the store, from its cursor (less the lookback) to now."""
        events: list[dict[str, Any]] = []
        start = stream.cursor - LOOKBACK_S
        while True:
            changes = await run_in_threadpool(self.store.changed_since, start, stream.agent_id, PAGE, stream.site)
            for at, row in changes:
                event = stream.event(at, row)
                if event is not None:
                    events.append(event)
            if len(changes) < PAGE:
                return events
            start = changes[-1][0]

    async def _read(self) -> None:
        """Read the store's changes every ``poll_s`` while any stream is open, and wake the streams."""
        # from now: a stream reads what came before it from the store itself
        self._seen = Stream(time.time(), None, None)
        try:
            start = self._seen.cursor - LOOKBACK_S
            while self.streams > 0:
                changes = await run_in_threadpool(self.store.changed_since, start, None, PAGE)
                self.reads += 1
                fresh = [(at, row) for at, row in changes if self._seen.event(at, row) is not None]
                if fresh:
                    async with self.arrived:
                        for at, row in fresh:
                            self.changes.append(Change(self.numbered, at, row))
                            self.numbered += 1
                        self.arrived.notify_all()
                horizon = self._seen.cursor - KEEP_S
                while self.changes and self.changes[0].at < horizon:
                    self.changes.popleft()
                if len(changes) == PAGE:  # more behind this page: read on from its end at once
                    start = changes[-1][0]
                    continue
                self._seen.forget_old()
                start = self._seen.cursor - LOOKBACK_S
                await asyncio.sleep(self.poll_s)
        except Exception:  # a store that fails: the streams wait, and start a new reader a second later
            log.exception("the live feed's reader stopped")
            await asyncio.sleep(1.0)
        finally:
            self._reader = None
