"""Per-agent receipt batches: segment ids confirmed by Kafka, or refused, waiting to be sent.

Filled from Kafka delivery callbacks and drained by the bridge loop; every method takes the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts import Receipt, Rejection


@dataclass
class _Batch:
    opened_at: float
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.accepted) + len(self.rejected)


class ReceiptBook:
    """Collects ids per agent; a batch is due after ``interval_s`` or when it holds ``max_ids``."""

    def __init__(self, interval_s: float, max_ids: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_ids = max_ids
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Batch] = {}
        self._full: list[tuple[str, _Batch]] = []

    def accept(self, agent_id: str, segment_id: str) -> None:
        with self._lock:
            self._batch(agent_id).accepted.append(segment_id)
            self._close_if_full(agent_id)

    def reject(self, agent_id: str, rejection: Rejection) -> None:
        with self._lock:
            self._batch(agent_id).rejected.append(rejection)
            self._close_if_full(agent_id)

    def due(self, everything: bool = False) -> list[Receipt]:
        """Take the batches that are due (all of them with ``everything``) as receipts."""
        now = self._clock()
        with self._lock:
            taken, self._full = self._full, []
            for agent_id in [a for a, b in self._open.items() if everything or now - b.opened_at >= self.interval_s]:
                taken.append((agent_id, self._open.pop(agent_id)))
        issued = time.time()
        return [
            Receipt(agent_id=agent_id, accepted=b.accepted, rejected=b.rejected, issued_at=issued)
            for agent_id, b in taken
        ]

    def pending(self) -> int:
        """Ids waiting in batches."""
        with self._lock:
            return sum(len(b) for b in self._open.values()) + sum(len(b) for _, b in self._full)

    def _batch(self, agent_id: str) -> _Batch:
        batch = self._open.get(agent_id)
        if batch is None:
            batch = self._open[agent_id] = _Batch(self._clock())
        return batch

    def _close_if_full(self, agent_id: str) -> None:
        if len(self._open[agent_id]) >= self.max_ids:
            self._full.append((agent_id, self._open.pop(agent_id)))
