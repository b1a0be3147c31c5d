"""The dashboard's FastAPI application: a JSON API over the caption store and one static page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from cloud.captions import CaptionVersion, Disagreement
from cloud.settings import DashboardSettings
from cloud.store import SegmentRow, Store

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


class SegmentDetail(SegmentRow):
    """A segment with every version of its caption."""

    versions: list[CaptionVersion]


def create_app(settings: DashboardSettings, store: Store | None = None) -> FastAPI:
    """The dashboard app on ``settings.store_url`` (or on ``store``, which the caller then closes)."""
    owned = store is None
    captions = store if store is not None else Store(settings.store_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            captions.close()

    app = FastAPI(title="edgecap dashboard", version="1", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)

    @app.get("/api/segments")
    def list_segments(
        limit: int = Query(200, ge=1, le=5000, description="Most segments returned."),
        agent_id: str | None = Query(None, description="Only this agent's segments."),
    ) -> list[SegmentRow]:
        """Segments with their draft and final caption, newest first."""
        return captions.list_segments(limit=limit, agent_id=agent_id)

    @app.get("/api/segments/{agent_id}/{segment_id}", response_model=None)
    def get_segment(agent_id: str, segment_id: str) -> SegmentDetail | JSONResponse:
        """One segment of one device with every version of its caption (ids are unique per device)."""
        key = (agent_id, segment_id)
        row = captions.get(key)
        if row is None:
            return JSONResponse({"detail": "no such segment"}, status_code=404)
        return SegmentDetail(**row, versions=captions.versions(key))

    @app.get("/api/disagreement")
    def disagreement(
        agent_id: str | None = Query(None, description="Only this agent."),
        since: float | None = Query(None, description="Only finals stored at or after this Unix time."),
    ) -> list[Disagreement]:
        """Draft-to-final disagreement per agent and edge model: pooled WER of the drafts against
        their finals, drafts kept, and how often each reason decided."""
        return captions.disagreement(agent_id=agent_id, since=since)

    @app.get("/api/stats")
    def stats() -> dict[str, int]:
        """How many segments, drafts and finals are stored."""
        return captions.counts()

    @app.get("/healthz", response_model=None)
    def healthz() -> dict[str, str] | JSONResponse:
        """ok when the store answers."""
        try:
            captions.counts()
        except SQLAlchemyError as exc:
            log.warning("health check: store unavailable: %s", exc)
            return JSONResponse({"status": "store unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
