"""The dashboard's FastAPI application: a JSON API over the caption store and its pages, behind a login
(:mod:`cloud.dashboard.access`: every route but the login and ``/healthz`` needs a user)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware

from cloud.captions import CaptionVersion, Disagreement
from cloud.dashboard.access import Caller, Door, admin, caller_of
from cloud.dashboard.accounts import Accounts
from cloud.dashboard.fleet import fleet_router
from cloud.dashboard.fleet_metrics import FleetCollector
from cloud.dashboard.jobs import jobs_router
from cloud.dashboard.live import PING_S, ChangeFeed, parse_cursor
from cloud.dashboard.pages import pages
from cloud.dashboard.system import system_router
from cloud.dashboard.uploads import UploadRefused, Uploads
from cloud.frame_store import FrameRow
from cloud.search import BadCursor, State
from cloud.settings import DashboardSettings
from cloud.store import SegmentRow, Store
from contracts.subtitles import one_line, srt_document, vtt_document

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = frozenset(str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.suffix in (".js", ".css"))
"""Every file the pages may load: the project's own and the vendored ones (``static/vendor``)."""


class SegmentDetail(SegmentRow):
    """A segment with every version of its caption."""

    versions: list[CaptionVersion]


def create_app(settings: DashboardSettings, store: Store | None = None) -> FastAPI:
    """The dashboard app on ``settings.store_url`` (or on ``store``, which the caller then closes)."""
    owned = store is None
    captions = store if store is not None else Store(settings.store_url)
    uploads = Uploads(settings)
    door = Door(settings, Accounts(captions))
    feed = ChangeFeed(captions, settings.events_poll_s)  # one reader of the store for every live stream

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        uploads.close()
        if owned:
            captions.close()

    # no Swagger page (it loads its scripts from a CDN); the OpenAPI document is behind the login
    app = FastAPI(title="edgecap dashboard", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(door.guard)])  # fmt: skip
    app.state.door = door
    app.state.feed = feed
    # pages, scripts and JSON compressed (htmx: 52 KB → 16 KB); Starlette never compresses the live
    # feed (text/event-stream), whose events must reach the browser as they are written
    app.add_middleware(GZipMiddleware, minimum_size=1024)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> Response:
        """A page request without a login goes to the login page; an API request gets the status."""
        page = request.method == "GET" and not request.url.path.startswith("/api/")
        if exc.status_code == 401 and page and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:
        return FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-cache"})

    @app.post("/api/login", response_model=None)
    async def login(request: Request) -> Response:
        """Log in with ``{"username", "password"}`` (JSON or a form): a session cookie and the CSRF
        token that requests which change something must send back in ``X-CSRF-Token``."""
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                body = None
        else:
            body = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if not isinstance(body, dict):
            return JSONResponse({"detail": "send username and password"}, status_code=422)
        return await run_in_threadpool(door.login, request, body)  # argon2 takes tens of ms

    @app.post("/api/logout", response_model=None)
    def logout(request: Request) -> Response:
        """End this browser's session."""
        return door.logout(request)

    @app.get("/api/session")
    def session(caller: Caller = Depends(caller_of)) -> dict[str, Any]:  # noqa: B008
        """Who is logged in, their role, and (for a browser session) its CSRF token."""
        return {"username": caller.user.username, "role": caller.user.role, "via": caller.via,
                "csrf_token": caller.csrf_token}  # fmt: skip

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/segments", response_model=None)
    def list_segments(
        response: Response,
        q: str | None = Query(None, max_length=500, description="Words of the final or the draft (PostgreSQL: "
                              "quoted phrases, or, -word)."),  # fmt: skip
        site: str | None = Query(None, description="Only segments of this site's agents."),
        agent_id: str | None = Query(None, description="Only this agent's segments."),
        start: float | None = Query(None, alias="from", description="Captured at or after this Unix time."),
        since: float | None = Query(None, description="The same as from."),
        to: float | None = Query(None, description="Captured before this Unix time."),
        state: State | None = Query(None, description="draft (no final yet), final, cloud or edge (whose text won)."),  # noqa: B008
        cursor: str | None = Query(None, description="Where the previous page ended (its X-Next-Cursor header)."),
        limit: int = Query(200, ge=1, le=5000, description="Most segments returned."),
    ) -> list[SegmentRow] | JSONResponse:
        """Segments with their draft and final caption, newest first, filtered; the next page's cursor
        comes in the ``X-Next-Cursor`` header (absent on the last page)."""
        try:
            page = captions.search_segments(q=q, site=site, agent_id=agent_id, since=start if start is not None
                                            else since, until=to, state=state, cursor=cursor, limit=limit)  # fmt: skip
        except BadCursor as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        if page.next_cursor:
            response.headers["X-Next-Cursor"] = page.next_cursor
        return page.rows

    @app.get("/api/events", response_model=None)
    def events(
        request: Request,
        agent_id: str | None = Query(None, description="Only this agent's segments."),
        site: str | None = Query(None, description="Only segments of this site's agents."),
        since: float | None = Query(None, description="Start after this change time (default: now)."),
    ) -> EventSourceResponse:
        """Server-sent events: one ``segment`` event per new state of a segment (its draft, its
        final), resumable (``Last-Event-ID``); see :mod:`cloud.dashboard.live`."""
        cursor = parse_cursor(request.headers.get("last-event-id"), since)
        stream = feed.events(request, cursor, agent_id, site)
        return EventSourceResponse(stream, ping=PING_S, headers={"Cache-Control": "no-store"})

    @app.get("/api/segments/{agent_id}/{segment_id}", response_model=None)
    def get_segment(agent_id: str, segment_id: str) -> SegmentDetail | JSONResponse:
        """One segment of one device with every version of its caption (ids are unique per device)."""
        key = (agent_id, segment_id)
        row = captions.get(key)
        if row is None:
            return JSONResponse({"detail": "no such segment"}, status_code=404)
        return SegmentDetail(**row, versions=captions.versions(key))

    @app.get("/api/export", response_model=None)
    def export(
        format: Literal["srt", "vtt", "txt", "json"] = Query("srt", description="srt, vtt, txt or json."),  # noqa: A002
        agent_id: str | None = Query(None, description="Only this agent's segments."),
        since: float | None = Query(None, description="Only segments captured at or after this Unix time."),
        until: float | None = Query(None, description="Only segments captured before this Unix time."),
        limit: int = Query(1000, ge=1, le=100_000, description="Most segments (the newest of the selection)."),
    ) -> Response:
        """The selected captions as a file, oldest first: each segment's final, or its draft while it
        has none; subtitle times run from the first segment's start."""
        rows = captions.list_segments(limit=limit, agent_id=agent_id, since=since, until=until)[::-1]
        name = f"edgecap-{agent_id or 'all'}.{format}"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if format == "json":
            return JSONResponse(rows, headers=headers)
        cues = [_Cue.of(row) for row in rows]
        origin = cues[0].started_at if cues else 0.0
        if format == "srt":
            return Response(srt_document(cues, origin), media_type="application/x-subrip", headers=headers)
        if format == "vtt":
            return Response(vtt_document(cues, origin), media_type="text/vtt", headers=headers)
        text = "".join(f"{one_line(c.text)}\n" for c in cues if c.text.strip())
        return Response(text, media_type="text/plain; charset=utf-8", headers=headers)

    @app.get("/api/agents")
    def list_agents(site: str | None = Query(None, description="Only this site's agents.")) -> list[dict[str, Any]]:
        """The fleet: each agent's latest status (online, or offline by its last will; last seen; site;
        queue, quota, mute, real-time factor) with its draft-to-final disagreement per edge model."""
        by_agent: dict[str, list[Disagreement]] = {}
        for row in captions.disagreement():
            by_agent.setdefault(row["agent_id"], []).append(row)
        return [a | {"disagreement": by_agent.get(a["agent_id"], [])} for a in captions.agents(site=site)]

    @app.get("/api/agents/{agent_id}", response_model=None)
    def get_agent(agent_id: str) -> dict[str, Any] | JSONResponse:
        """One agent: its latest status, its recent statuses (newest first), its disagreement."""
        found = captions.agent(agent_id)
        if found is None:
            return JSONResponse({"detail": "no status from this agent"}, status_code=404)
        return found | {"disagreement": captions.disagreement(agent_id=agent_id)}

    @app.get("/api/segments/{agent_id}/{segment_id}/audio", response_model=None)
    def segment_audio(agent_id: str, segment_id: str, request: Request) -> Response:
        """The segment's audio as the device sent it (Ogg Opus, FLAC; raw PCM as WAV), with byte
        ranges (``Range: bytes=a-b``: 206) so a player can seek."""
        found = captions.segment_audio((agent_id, segment_id))
        if found is None:
            return JSONResponse({"detail": "no audio kept for this segment"}, status_code=404)
        return byte_range(request.headers.get("range"), found[1], found[0])

    @app.get("/api/disagreement")
    def disagreement(
        agent_id: str | None = Query(None, description="Only this agent."),
        since: float | None = Query(None, description="Only finals stored at or after this Unix time."),
    ) -> list[Disagreement]:
        """Draft-to-final disagreement per agent and edge model: pooled WER of the drafts against
        their finals, drafts kept, and how often each reason decided."""
        return captions.disagreement(agent_id=agent_id, since=since)

    @app.get("/api/frames")
    def list_frames(
        limit: int = Query(100, ge=1, le=1000, description="Most frames returned."),
        agent_id: str | None = Query(None, description="Only this agent's frames."),
        label: str | None = Query(None, description="Only frames with an object of this class."),
        min_score: float = Query(0.0, ge=0, le=1, description="...found with at least this score."),
        since: float | None = Query(None, description="Only frames captured at or after this Unix time."),
        until: float | None = Query(None, description="Only frames captured before this Unix time."),
    ) -> list[dict[str, Any]]:
        """Frames with their detections, newest first; each with the URL of its image."""
        rows = captions.list_frames(agent_id=agent_id, label=label, min_score=min_score, since=since,
                                    until=until, limit=limit)  # fmt: skip
        return [_frame_json(r) for r in rows]

    @app.get("/api/frames/{agent_id}/{frame_id}", response_model=None)
    def get_frame(agent_id: str, frame_id: str) -> dict[str, Any] | JSONResponse:
        """One frame with its boxes (404 until the detector has stored it)."""
        row = captions.get_frame((agent_id, frame_id))
        if row is None:
            return JSONResponse({"detail": "no such frame (yet)"}, status_code=404)
        return _frame_json(row)

    @app.get("/api/frames/{agent_id}/{frame_id}/image", response_model=None)
    def frame_image(agent_id: str, frame_id: str) -> Response:
        """The frame's JPEG as the device (or the uploader) sent it."""
        data = captions.frame_image((agent_id, frame_id))
        if data is None:
            return JSONResponse({"detail": "no such frame image"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.post("/api/frames", status_code=202, response_model=None)
    async def upload_frame(
        request: Request,
        uploader: str = Query("upload", description="The frame's agent id: who uploaded it."),
        _: Caller = Depends(admin),  # noqa: B008 - viewers do not upload
    ) -> dict[str, Any] | JSONResponse:
        """An image (JPEG or PNG, the request body) through the frames' pipeline: answered once
        Kafka has it; its boxes appear at the returned URL when the detector has run (admins only)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            return JSONResponse({"detail": f"over {settings.max_upload_bytes} bytes"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                return JSONResponse({"detail": f"over {settings.max_upload_bytes} bytes"}, status_code=413)
        try:
            frame = await run_in_threadpool(uploads.submit, uploader, bytes(body))
        except UploadRefused as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return {
            "agent_id": frame.agent_id,
            "frame_id": frame.segment_id,
            "url": f"/api/frames/{frame.agent_id}/{frame.segment_id}",
        }

    @app.get("/api/stats")
    def stats() -> dict[str, int]:
        """How many segments, drafts and finals are stored."""
        return captions.counts()

    fleet = CollectorRegistry(auto_describe=True)  # this app's store: the process-wide registry has none
    fleet.register(FleetCollector(captions))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """The dashboard's own Prometheus metrics (uploads, jobs, configurations sent, scrapes) and
        the fleet, one series per device (:mod:`cloud.dashboard.fleet_metrics`), behind the login
        like every route: Prometheus scrapes it with an API token (``authorization: {credentials: …}``)."""
        return Response(generate_latest() + generate_latest(fleet), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=None)
    def healthz() -> dict[str, str] | JSONResponse:
        """ok when the store answers."""
        try:
            captions.counts()
        except SQLAlchemyError as exc:
            log.warning("health check: store unavailable: %s", exc)
            return JSONResponse({"status": "store unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> Response:
        """The pages' scripts and styles (behind the login too: a mount would skip the guard)."""
        if name not in ASSETS:
            return JSONResponse({"detail": "no such file"}, status_code=404)
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    app.include_router(system_router(settings))
    app.include_router(fleet_router(settings))
    app.include_router(jobs_router(settings, captions))
    app.include_router(pages(captions))
    return app


@dataclass(frozen=True)
class _Cue:
    """A segment as a subtitle cue: its final's text, or its draft's while it has no final."""

    segment_id: str
    started_at: float
    ended_at: float
    text: str

    @classmethod
    def of(cls, row: SegmentRow) -> _Cue:
        shown = row["final"] or row["draft"]
        text = shown["text"] if shown else ""
        return cls(row["segment_id"], row["started_at"], row["ended_at"], text)


def byte_range(header: str | None, data: bytes, media_type: str) -> Response:
    """``data`` whole (200), or the single byte range a ``Range`` header asks for (206), or 416."""
    common = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    if not header:
        return Response(data, media_type=media_type, headers=common)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    size = len(data)
    if match is None or match.groups() == ("", ""):
        return Response(status_code=416, headers=common | {"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return Response(status_code=416, headers=common | {"Content-Range": f"bytes */{size}"})
    return Response(data[start : end + 1], status_code=206, media_type=media_type,
                    headers=common | {"Content-Range": f"bytes {start}-{end}/{size}"})  # fmt: skip


def _frame_json(row: FrameRow) -> dict[str, Any]:
    return row.as_json() | {"image_url": f"/api/frames/{row.agent_id}/{row.frame_id}/image"}
