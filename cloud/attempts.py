"""Poison records: a worker process that dies with a record in hand, every time, is told by a count.

A worker counts each record's attempt in the store while its engine has the record (:func:`in_hand`)
and forgets it when the call returns, whatever it returned. A count that survives a restart means
the process died in the call. :func:`triage` sorts a batch by those counts: records never counted
go together; a counted one goes alone (so that only the record at fault is counted again), and one
counted ``max_attempts`` times is poison, to be dead-lettered (``Reason.POISON``) so that the
records behind it flow. The transcriber and the detector share it; keys are (agent_id, id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import Message

from cloud.tables import SegmentKey
from contracts import Reason
from runtime.kafka import BatchWorker, Publisher

log = logging.getLogger(__name__)

T = TypeVar("T")


class AttemptStore(Protocol):
    def attempts(self, keys: list[SegmentKey]) -> dict[SegmentKey, int]: ...
    def take_attempts(self, keys: list[SegmentKey]) -> dict[SegmentKey, int]: ...
    def forget_attempts(self, keys: list[SegmentKey]) -> None: ...


@dataclass
class Triage(Generic[T]):
    """A batch sorted by the deaths its records were in hand for."""

    fresh: list[T] = field(default_factory=list)
    """Never counted: together."""
    suspects: list[tuple[T, int]] = field(default_factory=list)
    """Counted fewer than ``max_attempts`` times (with the count): each alone."""
    poison: list[tuple[T, int]] = field(default_factory=list)
    """Counted ``max_attempts`` times: to be dead-lettered, then forgotten."""


def triage(store: AttemptStore, items: list[T], key: Callable[[T], SegmentKey], max_attempts: int) -> Triage[T]:
    counts = store.attempts([key(item) for item in items])
    out: Triage[T] = Triage()
    for item in items:
        died = counts.get(key(item))
        if died is None:
            out.fresh.append(item)
        elif died >= max_attempts:
            out.poison.append((item, died))
        else:
            out.suspects.append((item, died))
    return out


@contextmanager
def in_hand(store: AttemptStore, keys: list[SegmentKey]) -> Iterator[None]:
    """Count one attempt at each of ``keys`` durably for the duration of the block."""
    store.take_attempts(keys)
    try:
        yield
    finally:
        store.forget_attempts(keys)  # the call returned: whatever it gave, nothing died in it


def dead_letter_poison(
    worker: BatchWorker, publisher: Publisher, poison: list[tuple[tuple[Message, Any, Any], int]], what: str
) -> list[SegmentKey]:
    """Dead-letter the poison records of a :func:`triage` (items ``(record, message, input)``,
    ``message`` with ``agent_id`` and ``segment_id``), counted; their keys, to be forgotten once the
    dead letters are delivered. ``what`` names the work in the dead letter ("transcribing")."""
    keys = []
    for (record, message, _), died in poison:
        log.error("%s of %s: the worker died %d times with it in hand: dead-lettered",
                  message.segment_id, message.agent_id, died)  # fmt: skip
        worker.dead_letter(publisher, record, Reason.POISON, f"the worker died {died} times {what} it")
        worker.tally.add("poison")
        keys.append((message.agent_id, message.segment_id))
    return keys
