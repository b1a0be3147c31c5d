"""The reconciler: joins edge drafts and cloud transcripts per segment into one final caption.

Consumer group ``edgecap-reconcile`` on ``edgecap.segments`` (the edge draft each one carries),
``edgecap.drafts`` (drafts sent on their own) and ``edgecap.transcripts``. A draft is stored
(version 1). Every join is by (``agent_id``, ``segment_id``): two devices' segments never meet,
and a ``segment_id`` another device used too is counted (``id_collision``). A transcript is
reconciled with the draft by the rule of :mod:`cloud.rule`, which the store applies as it claims
the segment's final (:meth:`Store.record_final`); the resulting :class:`~contracts.Final` is
produced to ``edgecap.finals`` keyed by ``agent_id``, and only after its delivery is the record's
offset stored. A duplicate transcript (the segment already has a final) is counted and produces
nothing — unless the earlier final was stored but never delivered (a crash in between), in which
case the stored final is sent. Undecodable drafts and transcripts go to ``edgecap.deadletter``
(undecodable segments are the transcriber's to dead-letter); a store or Kafka failure rewinds the
batch and retries it after a pause (the loop: :class:`BatchWorker`).

The deadline: every few seconds (:meth:`Reconciler.tick`, at most a quarter of the deadline
apart) the reconciler makes the draft the final (reason ``deadline``) of each segment whose draft
has waited ``final_deadline_s`` for its transcript (:meth:`Store.claim_overdue`) and sends it to
``edgecap.finals``, so no device or viewer waits without bound on a cloud that is behind; the
transcript that comes later makes version 3 (the store's claim, once). A deadline final whose
delivery failed, or whose reconciler died before delivering it, is sent again by a later scan.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaException, Message
from sqlalchemy.exc import SQLAlchemyError

from cloud.rule import UPGRADE_VERSION, reconcile
from cloud.settings import WorkerSettings
from cloud.store import SegmentKey, Store
from cloud.tracking import open_disagreement_log
from contracts import CloudTranscript, DecodeError, Draft, Final, Kafka, Segment, Status, decode, encode
from runtime.kafka import RECORD_OVERHEAD_BYTES, BatchWorker, Publisher, record_limit

log = logging.getLogger(__name__)

DEFAULT_GROUP = "edgecap-reconcile"
DEADLINE_PAGE = 500  # deadline finals claimed per transaction
DEADLINE_TICK_BUDGET_S = 2.0  # most time one tick spends claiming pages before batches go on
RESEND_AFTER_S = 60.0  # a deadline final still unpublished this long after it was stored is sent again


class Reconciler(BatchWorker):
    """One reconciler instance; :meth:`run` until ``stop`` is set."""

    name = "reconcile"
    # edge drafts come inside their segments (edgecap.segments); edgecap.drafts takes drafts sent on
    # their own, by producers outside edgecap's bridge
    inputs = (Kafka.SEGMENTS, Kafka.DRAFTS, Kafka.TRANSCRIPTS, Kafka.STATUS)  # and the fleet's statuses
    outputs = (Kafka.FINALS, Kafka.DEADLETTER)
    batch_size = 200
    max_wait_s = 0.05

    def __init__(self, settings: WorkerSettings, store: Store | None = None) -> None:
        super().__init__(
            settings.kafka, settings.group or DEFAULT_GROUP, settings.session_timeout_ms, settings.topic_partitions
        )
        self.settings = settings
        self.store = store or Store(settings.store_url)
        self.max_record_bytes = record_limit(settings.kafka)
        self.tick_interval_s = min(5.0, settings.final_deadline_s / 4)
        # MLflow (mlflow_tracking_uri): each agent's disagreement, logged from tick() (cloud.tracking)
        self.tracking = open_disagreement_log(
            settings, self.store, {"final_deadline_s": settings.final_deadline_s} | settings.checks.model_dump()
        )

    def run(self, stop: threading.Event) -> None:
        """:meth:`BatchWorker.run`, then the MLflow run (if any) is ended."""
        try:
            super().run(stop)
        finally:
            if self.tracking is not None:
                self.tracking.tracker.close()

    def _rule(self, transcript: CloudTranscript, draft_text: str | None) -> Final:
        """The final :func:`~cloud.rule.reconcile` makes, cut to fit one Kafka record: a transcript at
        the contract's limits (1,000 spans of long texts, thousands of words) decodes, but its final
        carries it whole and would be refused by the producer for good (which ended this worker's
        thread, found by the fuzz test). Such a final goes without the transcript's spans (their
        timings and words); its texts, a few tens of kB at most, always fit. Applied before the
        store keeps the final, so a final sent again after a crash is the same one."""
        final = reconcile(transcript, draft_text, self.settings.checks)
        room = self.max_record_bytes - RECORD_OVERHEAD_BYTES - len(final.agent_id.encode())
        if len(encode(final)) <= room:
            return final
        log.warning("final %s of %s is over the record limit (%d bytes): sent without the transcript's spans",
                    final.segment_id, final.agent_id, self.max_record_bytes)  # fmt: skip
        self.tally.add("final_without_spans")
        return final.model_copy(update={"transcript": final.transcript.model_copy(update={"segments": []})})

    def handle(self, batch: list[Message], publisher: Publisher) -> bool:
        """Store and publish everything in ``batch``; False if it must be retried."""
        sent: list[Final] = []
        try:
            for msg in batch:
                self._one(msg, publisher, sent)
        except SQLAlchemyError:
            log.exception("store failed; the batch will be retried")
            return False
        if not publisher.deliver():
            return False
        try:
            self.store.mark_published(sent)
        except SQLAlchemyError:  # the finals are out; a retry would only re-send them
            log.exception("could not mark %d finals published", len(sent))
        return True

    def _one(self, msg: Message, publisher: Publisher, sent: list[Final]) -> None:
        raw = msg.value() or b""
        try:
            if msg.topic() == Kafka.SEGMENTS:
                self._segment(raw)
            elif msg.topic() == Kafka.DRAFTS:
                self._draft(decode(raw, Draft))
            elif msg.topic() == Kafka.STATUS:
                self.tally.add("status" if self.store.record_status(decode(raw, Status)) else "status_older")
            else:
                self._transcript(decode(raw, CloudTranscript), publisher, sent)
        except DecodeError as exc:
            self.dead_letter(publisher, msg, exc.reason, exc.detail)

    def _segment(self, raw: bytes) -> None:
        """The edge draft a segment carries (segments without one have none to store). A segment that
        does not decode is the transcriber's to dead-letter: counted here, not dead-lettered twice."""
        try:
            segment = decode(raw, Segment)
        except DecodeError as exc:
            log.debug("undecodable segment skipped (the transcriber dead-letters it): %s", exc)
            self.tally.add("bad_segment")
            return
        if self.settings.audio_retention_s > 0 and self.store.store_audio(segment, self.settings.audio_dir):
            self.tally.add("audio")  # kept for playback on the dashboard
        if segment.draft is not None:
            self._draft(Draft.of(segment))

    def _draft(self, draft: Draft) -> None:
        if self.store.upsert_draft(draft):
            self.tally.add("draft")
        else:
            log.debug("duplicate draft %s from %s", draft.segment_id, draft.agent_id)
            self.tally.add("duplicate_draft")

    def _transcript(self, transcript: CloudTranscript, publisher: Publisher, sent: list[Final]) -> None:
        key: SegmentKey = (transcript.agent_id, transcript.segment_id)
        final = self.store.record_final(transcript, self._rule)
        if final is not None:
            self.tally.add("final")
            if final.version == UPGRADE_VERSION:
                self.tally.add("upgraded_final")
            log.debug("final %s v%d (%s, %s): %s", final.segment_id, final.version, final.source, final.reason,
                      final.text)  # fmt: skip
            if self.store.collides(key):
                log.warning("segment id %s is used by another device too: kept apart", transcript.segment_id)
                self.tally.add("id_collision")
        else:
            already_sent = any((f.agent_id, f.segment_id) == key for f in sent)
            final = None if already_sent else self.store.unpublished_final(key)
            if final is None:
                log.debug("duplicate transcript %s from %s", transcript.segment_id, transcript.agent_id)
                self.tally.add("duplicate_transcript")
                return
            log.warning("final %s was stored but never published: sending it now", final.segment_id)
            self.tally.add("republished_final")
        publisher.send(Kafka.FINALS, final.agent_id, encode(final))
        sent.append(final)

    def tick(self, publisher: Publisher) -> None:
        """The deadline scan (see the module docstring): claim the overdue drafts' finals page by page
        (for at most a couple of seconds, so batches go on), send them with any deadline final left
        unpublished, and mark them published once Kafka confirmed them. A store or Kafka failure is
        logged; the next tick tries again (claimed but unsent finals are sent after RESEND_AFTER_S)."""
        if self.tracking is not None:
            self.tracking.tick()  # never raises
        try:
            self.store.trim_status_history(time.time() - self.settings.status_history_s)
            self.store.purge_audio(time.time() - self.settings.audio_retention_s)
        except SQLAlchemyError:
            log.exception("trimming the status history or the audio failed; the next tick tries again")
        try:
            started = time.monotonic()
            finals: list[Final] = []
            while time.monotonic() - started < DEADLINE_TICK_BUDGET_S:
                page = self.store.claim_overdue(time.time() - self.settings.final_deadline_s, DEADLINE_PAGE)
                finals += page
                if len(page) < DEADLINE_PAGE:
                    break
            again = self.store.unsent_deadline_finals(time.time() - RESEND_AFTER_S, DEADLINE_PAGE)
            if not finals and not again:
                return
            for final in finals + again:
                publisher.send(Kafka.FINALS, final.agent_id, encode(final))
            self.tally.add("deadline_final", len(finals))
            if again:
                log.warning("%d deadline finals were never published: sending them again", len(again))
                self.tally.add("resent_deadline_final", len(again))
            if not publisher.deliver():
                log.error("%d deadline finals not delivered: sent again later", len(finals) + len(again))
                return
            self.store.mark_published(finals + again)
            log.info("%d drafts became finals at the deadline (%.0f s)", len(finals), self.settings.final_deadline_s)
        except (SQLAlchemyError, KafkaException, DecodeError):  # DecodeError: a stored final this code cannot read
            log.exception("deadline scan failed; the next tick tries again")
