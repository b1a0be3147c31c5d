"""The live feed: every change of a segment (its draft, then its final) as a server-sent event.

``GET /api/events`` streams one ``segment`` event per new state of a segment (the row as
``/api/segments`` gives it), its id the change's time (``updated_at``). Browsers reconnect by
themselves and send the last id they saw (``Last-Event-ID``); the feed resumes from there, so a
reconnect misses nothing. It reads the store every ``poll_s`` (the change index makes that cheap),
and each time from :data:`LOOKBACK_S` before its cursor, because writers on other connections (other
reconcilers) may commit a change stamped a little before one already seen; what was already sent on
this stream is not sent twice (a row's state is its key and caption version), and a client applies
an event idempotently anyway (the row replaced in place). ``sse-starlette`` does the protocol
(headers, a ping comment every 15 s, the client's disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cloud.store import SegmentRow, Store

log = logging.getLogger(__name__)

LOOKBACK_S = 5.0
"""How far behind its cursor the feed reads again (a writer's clock and commit may lag that much)."""
PING_S = 15
PAGE = 500


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


async def segment_events(
    request: Request, store: Store, cursor: float, agent_id: str | None, poll_s: float, site: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The events of one stream, until the client goes away."""
    sent: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (caption version, change time) sent
    start = cursor - LOOKBACK_S
    while not await request.is_disconnected():
        changes = await run_in_threadpool(store.changed_since, start, agent_id, PAGE, site)
        for changed_at, row in changes:
            key = (row["agent_id"], row["segment_id"])
            version = _version(row)
            if key in sent and sent[key][0] >= version:
                continue
            sent[key] = (version, changed_at)
            cursor = max(cursor, changed_at)
            yield {"event": "segment", "id": f"{changed_at:.6f}", "data": json.dumps(row)}
        if len(changes) == PAGE:  # more behind this page: read on from its end at once
            start = changes[-1][0]
            continue
        horizon = cursor - 2 * LOOKBACK_S  # what fell out of the lookback cannot come again
        for key in [k for k, (_, at) in sent.items() if at < horizon]:
            del sent[key]
        start = cursor - LOOKBACK_S
        await asyncio.sleep(poll_s)
