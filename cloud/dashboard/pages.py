"""The dashboard's pages: HTML rendered on the server (Jinja2) from the same store reads as the JSON
routes, made live with htmx (vendored: ``static/vendor/htmx.min.js``) and a few small scripts.

Each view is one template extending ``base.html``; a request from htmx (``HX-Request``) for a
filtered view gets only its results fragment, which htmx swaps in and records in the address bar, so
filters live in the URL and a page reloads, bookmarks and shares as it was. Every page is behind the
login like every route (the app-wide guard); the CSRF token rides on ``<body hx-headers>`` so htmx's
requests that change something carry it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, cast, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from cloud.search import BadCursor, State
from cloud.store import Store

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
NAV = (("/", "Live"), ("/search", "Search"), ("/fleet", "Fleet"), ("/frames", "Frames"), ("/upload", "Upload"),
       ("/system", "System"))  # fmt: skip
PAGE = 50
NO_CACHE = {"Cache-Control": "no-cache"}


def _utc(at: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if at is None:
        return "–"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime(fmt) + " UTC"


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    seconds = max(0.0, now - at)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _when(value: str | None) -> float | None:
    """A ``datetime-local`` field (the browser's local time, sent as UTC by the page) or Unix seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = dt.datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


TEMPLATES.env.filters.update(utc=_utc, tojson_compact=lambda v: json.dumps(v, separators=(",", ":")))


def pages(captions: Store) -> APIRouter:
    """The router of every page (the JSON routes they share their reads with are in ``app.py``)."""
    router = APIRouter(include_in_schema=False)

    def render(request: Request, name: str, **context: Any) -> HTMLResponse:
        caller = request.state.caller
        base = {"caller": caller, "nav": NAV, "path": request.url.path, "now": time.time(), "ago": _ago}
        return TEMPLATES.TemplateResponse(request, name, base | context, headers=NO_CACHE)

    def missing(request: Request, what: str) -> HTMLResponse:
        page = render(request, "missing.html", what=what)
        page.status_code = 404
        return page

    def fragment(request: Request) -> bool:
        return request.headers.get("hx-request") == "true" and request.headers.get("hx-history-restore-request") is None

    @router.get("/")
    def live(request: Request, site: str | None = None, agent_id: str | None = None) -> HTMLResponse:
        fleet = captions.agents()
        sites = sorted({a["site"] for a in fleet if a["site"]})
        return render(request, "live.html", sites=sites, agents=[a["agent_id"] for a in fleet], site=site or "",
                      agent_id=agent_id or "", counts=captions.counts())  # fmt: skip

    @router.get("/segments/{agent_id}/{segment_id}", response_model=None)
    def segment(request: Request, agent_id: str, segment_id: str) -> Response:
        key = (agent_id, segment_id)
        row = captions.get(key)
        if row is None:
            return missing(request, f"segment {agent_id}/{segment_id}")
        return render(request, "segment.html", seg=row, versions=captions.versions(key),
                      journey=captions.journey(key), why=captions.reconciliation(key),
                      has_audio=captions.has_audio(key))  # fmt: skip

    @router.get("/search")
    def search(
        request: Request,
        q: str = Query("", max_length=500),
        site: str = "",
        agent_id: str = "",
        start: str = Query("", alias="from"),
        to: str = "",
        state: str = "",
        cursor: str | None = None,
    ) -> HTMLResponse:
        filters = {"q": q, "site": site, "agent_id": agent_id, "from": start, "to": to, "state": state}
        chosen = cast(State, state) if state in get_args(State) else None
        error = None
        try:
            found = captions.search_segments(q=q or None, site=site or None, agent_id=agent_id or None,
                                             since=_when(start), until=_when(to), state=chosen, cursor=cursor,
                                             limit=PAGE)  # fmt: skip
            rows, next_cursor = found.rows, found.next_cursor
        except (BadCursor, ValueError) as exc:
            rows, next_cursor, error = [], None, str(exc)
        context = {"rows": rows, "next_cursor": next_cursor, "filters": filters, "error": error, "more": bool(cursor)}
        if fragment(request):
            return render(request, "search_results.html", **context)
        fleet = captions.agents()
        return render(request, "search.html", sites=sorted({a["site"] for a in fleet if a["site"]}),
                      agents=[a["agent_id"] for a in fleet], **context)  # fmt: skip

    @router.get("/fleet")
    def fleet(request: Request, site: str = "") -> HTMLResponse:
        by_agent: dict[str, Any] = {}
        for row in captions.disagreement():
            by_agent.setdefault(row["agent_id"], []).append(row)
        agents = [a | {"disagreement": by_agent.get(a["agent_id"], [])} for a in captions.agents(site=site or None)]
        if fragment(request):
            return render(request, "fleet_rows.html", agents=agents)
        sites = sorted({a["site"] for a in captions.agents() if a["site"]})
        return render(request, "fleet.html", agents=agents, sites=sites, site=site)

    @router.get("/fleet/{agent_id}", response_model=None)
    def agent(request: Request, agent_id: str) -> Response:
        found = captions.agent(agent_id, history=50)
        if found is None:
            return missing(request, f"agent {agent_id}")
        recent = captions.search_segments(agent_id=agent_id, limit=10).rows
        return render(request, "agent.html", agent=found, disagreement=captions.disagreement(agent_id=agent_id),
                      recent=recent)  # fmt: skip

    @router.get("/frames")
    def frames(
        request: Request, agent_id: str = "", label: str = "", min_score: float = Query(0.0, ge=0, le=1)
    ) -> HTMLResponse:
        rows = captions.list_frames(agent_id=agent_id or None, label=label or None, min_score=min_score, limit=60)
        shown = [r.as_json() | {"image_url": f"/api/frames/{r.agent_id}/{r.frame_id}/image"} for r in rows]
        context = {"frames": shown, "filters": {"agent_id": agent_id, "label": label, "min_score": min_score}}
        if fragment(request):
            return render(request, "frames_grid.html", **context)
        return render(request, "frames.html", **context)

    @router.get("/upload")
    def upload(request: Request) -> HTMLResponse:
        return render(request, "upload.html")

    @router.get("/system")
    def system(request: Request) -> HTMLResponse:
        return render(request, "system.html")

    return router
