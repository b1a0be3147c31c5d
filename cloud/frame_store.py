"""Frames and their detections in the store: one row per frame, kept for a retention period.

The detection worker stores each frame with what it found (:meth:`FrameRecords.store_detections`)
before it publishes the :class:`~contracts.Detections`: a redone batch (a worker that died before
committing its offsets) finds the row there and stores nothing twice, so every frame has exactly one
result, the first. The JPEG goes into the database (``frames.jpeg``: small deployments, nothing
else to share) or, with ``images_dir``, into a file ``<images_dir>/<agent_id>/<frame_id>.jpg`` whose
path the row keeps (written before the row, so a row never points at nothing; a file left by a
crash before its row is written again the next time). :meth:`FrameRecords.purge_frames` deletes
rows and files older than the retention. Listing by class reads ``frame_labels`` (a frame's
classes with their best score).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, select

from cloud.tables import SegmentKey, frame_labels, frames
from contracts import Detection, Detections, Frame, Region

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRow:
    """A stored frame and what the detector found in it."""

    agent_id: str
    frame_id: str
    seq: int
    captured_at: float
    width: int
    height: int
    regions: list[Region]
    boxes: list[Detection]
    model_id: str
    detected_at: float
    jpeg_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "frame_id": self.frame_id,
            "seq": self.seq,
            "captured_at": self.captured_at,
            "width": self.width,
            "height": self.height,
            "regions": [r.model_dump() for r in self.regions],
            "boxes": [b.model_dump() for b in self.boxes],
            "model_id": self.model_id,
            "detected_at": self.detected_at,
            "jpeg_bytes": self.jpeg_bytes,
        }


def image_path(images_dir: Path, agent_id: str, frame_id: str) -> Path:
    """Where a frame's JPEG goes on disk (both ids are safe file names by the contract's patterns)."""
    return images_dir / agent_id / f"{frame_id}.jpg"


class FrameRecords:
    """The frame half of :class:`cloud.store.Store` (a mixin: it uses the store's engines)."""

    engine: Engine
    _reader: Engine
    _insert: Any

    def store_detections(self, frame: Frame, found: Detections, images_dir: Path | None = None) -> bool:
        """Store ``frame`` with ``found``; False (and nothing written) if it was stored before."""
        key = (frame.agent_id, frame.segment_id)
        if self.frame_stored(key):
            return False
        jpeg = frame.image.data
        path = None
        if images_dir is not None:
            path = image_path(images_dir, *key)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(jpeg)
            os.replace(partial, path)
        now = time.time()
        boxes = [b.model_dump() for b in found.boxes]
        row = {
            "agent_id": frame.agent_id,
            "frame_id": frame.segment_id,
            "seq": frame.seq,
            "captured_at": frame.captured_at,
            "width": frame.image.width,
            "height": frame.image.height,
            "regions": json.dumps([r.model_dump() for r in frame.regions]),
            "jpeg": None if path else jpeg,
            "jpeg_path": str(path) if path else None,
            "jpeg_bytes": len(jpeg),
            "model_id": found.model_id,
            "boxes": json.dumps(boxes),
            "box_count": len(boxes),
            "detected_at": found.detected_at,
            "stored_at": now,
        }
        best: dict[str, float] = {}
        for b in found.boxes:
            best[b.label] = max(best.get(b.label, 0.0), b.score)
        with self.engine.begin() as conn:
            insert = self._insert(frames).values(**row).on_conflict_do_nothing()
            stored = conn.execute(insert.returning(frames.c.frame_id)).first() is not None
            if stored and best:
                conn.execute(
                    self._insert(frame_labels).on_conflict_do_nothing(),
                    [
                        {
                            "agent_id": key[0],
                            "frame_id": key[1],
                            "label": label,
                            "best_score": score,
                            "captured_at": frame.captured_at,
                        }  # fmt: skip
                        for label, score in best.items()
                    ],
                )
        return stored

    def frame_stored(self, key: SegmentKey) -> bool:
        query = select(frames.c.frame_id).where(frames.c.agent_id == key[0], frames.c.frame_id == key[1])
        with self._reader.connect() as conn:
            return conn.execute(query).first() is not None

    def list_frames(
        self,
        *,
        agent_id: str | None = None,
        label: str | None = None,
        min_score: float = 0.0,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[FrameRow]:
        """Frames newest first, filtered by device, class (with at least ``min_score``) and capture time."""
        query = select(*_ROW_COLUMNS)
        if label is not None:
            query = query.join(
                frame_labels,
                and_(frame_labels.c.agent_id == frames.c.agent_id, frame_labels.c.frame_id == frames.c.frame_id),
            ).where(frame_labels.c.label == label, frame_labels.c.best_score >= min_score)
        if agent_id is not None:
            query = query.where(frames.c.agent_id == agent_id)
        if since is not None:
            query = query.where(frames.c.captured_at >= since)
        if until is not None:
            query = query.where(frames.c.captured_at < until)
        query = query.order_by(frames.c.captured_at.desc(), frames.c.frame_id.desc()).limit(limit)
        with self._reader.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def get_frame(self, key: SegmentKey) -> FrameRow | None:
        query = select(*_ROW_COLUMNS).where(frames.c.agent_id == key[0], frames.c.frame_id == key[1])
        with self._reader.connect() as conn:
            found = conn.execute(query).first()
        return _row(found) if found is not None else None

    def frame_image(self, key: SegmentKey) -> bytes | None:
        """The frame's JPEG, from the database or its file; None if unknown (or its file is gone)."""
        query = select(frames.c.jpeg, frames.c.jpeg_path).where(
            frames.c.agent_id == key[0], frames.c.frame_id == key[1]
        )
        with self._reader.connect() as conn:
            found = conn.execute(query).first()
        if found is None:
            return None
        if found.jpeg is not None:
            return bytes(found.jpeg)
        try:
            return Path(found.jpeg_path).read_bytes()
        except OSError as exc:
            log.warning("the image of frame %s of %s is gone: %s", key[1], key[0], exc)
            return None

    def purge_frames(self, captured_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` frames captured before ``captured_before`` (rows and files); how many."""
        query = (
            select(frames.c.agent_id, frames.c.frame_id, frames.c.jpeg_path)
            .where(frames.c.captured_at < captured_before)
            .order_by(frames.c.captured_at)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            old = conn.execute(query).all()
            for r in old:
                conn.execute(delete(frame_labels).where(frame_labels.c.agent_id == r.agent_id,
                                                        frame_labels.c.frame_id == r.frame_id))  # fmt: skip
                conn.execute(delete(frames).where(frames.c.agent_id == r.agent_id, frames.c.frame_id == r.frame_id))
        for r in old:  # after the rows: a file whose row is gone is garbage, a row without its file is not
            if r.jpeg_path:
                Path(r.jpeg_path).unlink(missing_ok=True)
        return len(old)


_ROW_COLUMNS = (
    frames.c.agent_id,
    frames.c.frame_id,
    frames.c.seq,
    frames.c.captured_at,
    frames.c.width,
    frames.c.height,
    frames.c.regions,
    frames.c.boxes,
    frames.c.model_id,
    frames.c.detected_at,
    frames.c.jpeg_bytes,
)


def _row(r: Any) -> FrameRow:
    return FrameRow(
        agent_id=r.agent_id,
        frame_id=r.frame_id,
        seq=int(r.seq),
        captured_at=float(r.captured_at),
        width=int(r.width),
        height=int(r.height),
        regions=[Region(**x) for x in json.loads(r.regions)],
        boxes=[Detection(**x) for x in json.loads(r.boxes)],
        model_id=r.model_id,
        detected_at=float(r.detected_at),
        jpeg_bytes=int(r.jpeg_bytes),
    )
