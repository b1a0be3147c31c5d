"""One caption and its versions: the edge draft (version 1), then the cloud's finals.

The record is what ``captions.jsonl`` holds, one line per caption, so the same shape serves the
file, a restart (it is loaded back) and tools that read the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Version:
    """One text of a caption, by one model."""

    version: int
    source: str
    text: str
    model_id: str
    produced_at: float
    received_at: float | None = None  # when a cloud final reached this device

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "version": self.version,
            "source": self.source,
            "text": self.text,
            "model_id": self.model_id,
            "produced_at": self.produced_at,
        }
        if self.received_at is not None:
            record["received_at"] = self.received_at
        return record


@dataclass
class Caption:
    """A segment's caption: timing, when it was first shown, and every version, oldest first."""

    segment_id: str
    seq: int
    started_at: float
    ended_at: float
    shown_at: float
    versions: list[Version] = field(default_factory=list)

    @property
    def current(self) -> Version:
        return self.versions[-1]

    @property
    def text(self) -> str:
        return self.current.text

    @property
    def version(self) -> int:
        return self.current.version

    @property
    def is_final(self) -> bool:
        return self.current.version > 1

    def to_record(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "seq": self.seq,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "text": self.text,
            "source": self.current.source,
            "version": self.version,
            "shown_at": self.shown_at,
            "versions": [v.to_record() for v in self.versions],
        }

    @classmethod
    def from_record(cls, record: Any) -> Caption:
        """The caption of one ``captions.jsonl`` line; ValueError when it is not one."""
        try:
            versions = [
                Version(
                    version=int(v["version"]),
                    source=str(v["source"]),
                    text=str(v["text"]),
                    model_id=str(v["model_id"]),
                    produced_at=float(v["produced_at"]),
                    received_at=None if v.get("received_at") is None else float(v["received_at"]),
                )
                for v in record["versions"]
            ]
            caption = cls(
                segment_id=str(record["segment_id"]),
                seq=int(record["seq"]),
                started_at=float(record["started_at"]),
                ended_at=float(record["ended_at"]),
                shown_at=float(record["shown_at"]),
                versions=sorted(versions, key=lambda v: v.version),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a caption record: {exc!r}") from exc
        if not caption.versions:
            raise ValueError("caption record without versions")
        return caption
