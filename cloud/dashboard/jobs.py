"""Audio files uploaded as jobs: ``POST /api/jobs``, ``GET /api/jobs``, ``GET /api/jobs/{job_id}``.

An uploaded file goes the way a device's speech goes. It is decoded whole, cut into utterances and
encoded as the agent does (:mod:`cloud.dashboard.audio_upload`), and each utterance becomes a
:class:`~contracts.Segment` of the uploader (an agent id, ``upload`` by default) without a draft,
produced to ``edgecap.segments`` with ``acks=all``; the upload is answered (202) once Kafka has
confirmed every one, and the job is then kept in the store (:mod:`cloud.job_store`). The transcriber
and the reconciler treat these segments as any other: each gets its final (reason ``no_draft``) and
its audio is kept for playback.

Times: the file's first sample is given the capture time ``origin_at`` (the upload's time less the
file's length, so that every segment lies in the past and the job's segments sort in the file's
order), each segment starts at ``origin_at`` plus its offset in the file, and ``seq`` grows with
the position. ``GET /api/jobs/{job_id}`` answers the progress (finals stored of segments sent) and
the transcript so far: each segment's final with its words, their times in seconds from the file's
start (the final's word times plus the segment's offset, kept within the segment), so that a page
can seek a player to a word; each segment's audio is at ``/api/segments/{agent_id}/{segment_id}/audio``.

Refusals (413 too large or too long, 415 not a taken format, 422 damaged, no speech or a bad name,
503 no Kafka or Kafka did not confirm) carry their reason, are logged and counted
(``edgecap_dashboard_jobs_total{outcome}`` and :attr:`Jobs.counts`). Jobs are cut one at a time per
dashboard process, which bounds the memory decoding takes (:attr:`DashboardSettings.max_job_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cloud.dashboard.access import Caller, admin
from cloud.dashboard.audio_upload import SAMPLE_RATE, Piece, cut, decode_file
from cloud.dashboard.uploads import UploadRefused
from cloud.job_store import Job, JobPiece, JobPieceState
from cloud.settings import DashboardSettings
from cloud.store import Store
from cloud.tables import JOB_NAME_CHARS
from contracts import Kafka, Segment, encode, new_segment_id
from contracts.ids import is_agent_id
from runtime.kafka import Publisher

log = logging.getLogger(__name__)

JOBS = Counter(
    "edgecap_dashboard_jobs_total",
    "Audio files uploaded as jobs, by outcome: accepted, or refused with the HTTP status answered.",
    ["outcome"],
)
DEFAULT_UPLOADER = "upload"
DELIVERY_TIMEOUT_S = 30.0


class Jobs:
    """Turns uploaded audio files into segments on Kafka and jobs in the store (one at a time)."""

    def __init__(self, settings: DashboardSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()
        self._last_seq = 0
        self.counts: dict[str, int] = {}

    def submit(self, data: bytes, uploader: str, name: str, created_by: str) -> Job:
        """The job made of ``data`` (its segments confirmed by Kafka, the job stored);
        :class:`~cloud.dashboard.uploads.UploadRefused` otherwise (counted and logged)."""
        try:
            with self._lock:
                job = self._submit(data, uploader, name, created_by)
        except UploadRefused as exc:
            self._count(f"refused_{exc.status}")
            log.warning("job from %s (%s, %d bytes) refused: %s", created_by, name or "unnamed", len(data), exc.detail)
            raise
        self._count("accepted")
        log.info("job %s from %s: %s (%s, %.1f s) as %d segments of %s", job.job_id, created_by, name or "unnamed",
                 job.format, job.duration_s, job.segment_count, job.agent_id)  # fmt: skip
        return job

    def refuse(self, status: int, detail: str, created_by: str) -> JSONResponse:
        """A refusal made before the file was read whole (its size): counted and logged like the rest."""
        self._count(f"refused_{status}")
        log.warning("job from %s refused: %s", created_by, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        JOBS.labels(outcome).inc()

    def _submit(self, data: bytes, uploader: str, name: str, created_by: str) -> Job:
        if not is_agent_id(uploader):
            raise UploadRefused(422, f"uploader {uploader[:80]!r} is not an agent id (letters, digits, '_', '.', '-')")
        if len(name) > JOB_NAME_CHARS or "\x00" in name:
            raise UploadRefused(422, f"a file name is at most {JOB_NAME_CHARS} characters, without NUL")
        if len(data) > self.settings.max_job_bytes:
            raise UploadRefused(413, f"{len(data)} bytes, over {self.settings.max_job_bytes}")
        decoded = decode_file(data, self.settings.max_job_s)
        if self.settings.kafka is None:
            raise UploadRefused(503, "audio uploads need Kafka: set the dashboard's kafka settings")
        pieces = cut(decoded)
        if not pieces:
            raise UploadRefused(422, f"no speech found in {decoded.duration_s:.1f} s of audio")
        created_at = time.time()
        job = Job(job_id=new_segment_id(), agent_id=uploader, name=name, kind="audio", format=decoded.format,
                  bytes=len(data), created_by=created_by, created_at=created_at,
                  origin_at=round(created_at - decoded.duration_s, 6), duration_s=decoded.duration_s,
                  segment_count=len(pieces))  # fmt: skip
        segments = [self._segment(job, piece) for piece in pieces]
        if self._publisher is None:
            self._publisher = Publisher(self.settings.kafka)
        for segment in segments:
            self._publisher.send(Kafka.SEGMENTS, segment.agent_id, encode(segment))
        if not self._publisher.deliver(timeout_s=DELIVERY_TIMEOUT_S):
            raise UploadRefused(503, "Kafka did not confirm the job's segments: try again")
        kept = [JobPiece(k, s.agent_id, s.segment_id, p.offset_s, p.duration_s)
                for k, (s, p) in enumerate(zip(segments, pieces, strict=True))]  # fmt: skip
        try:
            self.store.add_job(job, kept)
        except SQLAlchemyError as exc:  # the segments are on their way; only the job's record is missing
            log.exception("job %s: its %d segments were sent but the job was not stored", job.job_id, len(kept))
            raise UploadRefused(503, "the store did not keep the job: try again") from exc
        return job

    def _segment(self, job: Job, piece: Piece) -> Segment:
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)  # grows per agent, across jobs too
        return Segment(agent_id=job.agent_id, segment_id=new_segment_id(), seq=self._last_seq,
                       started_at=round(job.origin_at + piece.start / SAMPLE_RATE, 6),
                       ended_at=round(job.origin_at + piece.end / SAMPLE_RATE, 6), audio=piece.audio)  # fmt: skip

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None  # the last reference: librdkafka's client goes with it


def job_json(job: Job, finals: int) -> dict[str, Any]:
    """A job with its progress and URL."""
    return job.as_json() | {
        "progress": {"finals": finals, "segments": job.segment_count, "done": finals >= job.segment_count},
        "url": f"/api/jobs/{job.job_id}",
    }


def piece_json(state: JobPieceState) -> dict[str, Any]:
    """One segment of a job: where it lies in the file, its final (None until stored) and the
    final's words with their times in the file."""
    piece, final = state.piece, state.final
    out: dict[str, Any] = {
        "position": piece.position,
        "agent_id": piece.agent_id,
        "segment_id": piece.segment_id,
        "offset_s": piece.offset_s,
        "duration_s": piece.duration_s,
        "url": f"/api/segments/{piece.agent_id}/{piece.segment_id}",
        "audio_url": f"/api/segments/{piece.agent_id}/{piece.segment_id}/audio",
        "final": None,
        "words": [],
    }
    if final is None:
        return out
    out["final"] = {"text": final.text, "source": final.source, "reason": final.reason, "version": final.version,
                    "model_id": final.transcript.model_id}  # fmt: skip
    if final.source == "cloud":  # an edge final's text is the draft's: the transcript's words are not its words
        start, end = piece.offset_s, piece.offset_s + piece.duration_s
        out["words"] = [
            {
                "word": w.word.strip(),
                "start": _within(piece.offset_s + w.start, start, end),
                "end": _within(piece.offset_s + w.end, start, end),
                "probability": w.probability,
            }
            for span in final.transcript.segments
            for w in span.words
        ]
    return out


def _within(t: float, start: float, end: float) -> float:
    """``t`` kept within the segment's span in the file (the aligner's times may stray past its ends)."""
    return round(min(max(t, start), end), 3)


def jobs_router(settings: DashboardSettings, store: Store) -> APIRouter:
    """The jobs' routes (uploading is for admins; every route is behind the login)."""
    jobs = Jobs(settings, store)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        jobs.close()

    router = APIRouter(lifespan=lifespan)

    @router.post("/api/jobs", status_code=202, response_model=None)
    async def create_job(
        request: Request,
        name: str = Query("", description="The file's original name (shown with the job)."),
        uploader: str = Query(DEFAULT_UPLOADER, description="The segments' agent id: who uploaded it."),
        caller: Caller = Depends(admin),  # noqa: B008 - viewers do not upload
    ) -> dict[str, Any] | JSONResponse:
        """An audio file (WAV, FLAC, Ogg Vorbis or Opus, MP3; the request body) through the speech
        pipeline: answered once Kafka has all its segments; progress and transcript at the returned
        URL (admins only)."""
        limit = settings.max_job_bytes
        user = caller.user.username
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return jobs.refuse(413, f"over {limit} bytes", user)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return jobs.refuse(413, f"over {limit} bytes", user)
        try:
            job = await run_in_threadpool(jobs.submit, bytes(body), uploader, name, user)
        except UploadRefused as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return {"job_id": job.job_id, "agent_id": job.agent_id, "segments": job.segment_count,
                "duration_s": job.duration_s, "url": f"/api/jobs/{job.job_id}"}  # fmt: skip

    @router.get("/api/jobs")
    def list_jobs(
        limit: int = Query(50, ge=1, le=1000, description="Most jobs returned."),
        agent_id: str | None = Query(None, description="Only this uploader's jobs."),
    ) -> list[dict[str, Any]]:
        """Uploaded files, newest first, each with its progress (finals stored of segments sent)."""
        return [job_json(job, finals) for job, finals in store.jobs(limit=limit, agent_id=agent_id)]

    @router.get("/api/jobs/{job_id}", response_model=None)
    def get_job(job_id: str) -> dict[str, Any] | JSONResponse:
        """One job: its progress and its transcript so far, segment by segment in the file's order,
        with each final's words timed in seconds from the file's start (to seek a player to a word)."""
        found = store.job(job_id)
        if found is None:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        job, states = found
        finals = sum(s.final is not None for s in states)
        pieces = [piece_json(s) for s in states]
        text = " ".join(p["final"]["text"].strip() for p in pieces if p["final"] and p["final"]["text"].strip())
        return job_json(job, finals) | {"text": text, "segments": pieces}

    return router
