"""Crash proofs of the bridge with real processes: nothing committed on a device is lost or stored twice.

Five simulated agents (the real outbox + MQTT link, :mod:`tests.agents_sim`) commit segments at a
steady rate while something is killed: the bridge (``python -m bridge``, SIGKILLed every few
seconds and restarted), mosquitto (SIGKILLed and restarted) or the Kafka-protocol broker (stopped,
SIGSTOP, for ``EDGECAP_TEST_KAFKA_DOWN_S``, 30 s by default: every request hangs, nothing is
refused, the hardest outage for a client to notice; then SIGCONT). Tansu is not restarted here: it
loses a few records it had confirmed across a restart, even a graceful one on durable S3 storage
(see the README's notes on the brokers), which would test Tansu, not the bridge. Downstream the
real reconciler (``python -m cloud reconcile``) stores each segment's draft from ``edgecap.segments``.

Afterwards: every committed ``segment_id`` is in Kafka ``edgecap.segments`` (0 lost), duplicates
are counted, the first occurrences keep each agent's ``seq`` order, every outbox is empty (none of
them rejected by the bridge: a quarantined segment also leaves the outbox's depth), and the
store holds exactly one row per ``segment_id`` (the reconciler stored each draft once and counted
the duplicates). Sizes: ``EDGECAP_TEST_CHAOS_SEGMENTS`` (default 10000, the issue's proof) at
``EDGECAP_TEST_CHAOS_RATE`` segments/s (default 250).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agents_sim import Fleet, Service, bridge_service, reconcile_service
from support import Record, read_topic, scale, scrape, wait_until

from contracts import Kafka, Segment, decode
from devtools.brokers import Mosquitto, Tansu, free_port
from runtime.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.proof]

SEGMENTS = scale("CHAOS_SEGMENTS", 10000)
RATE = scale("CHAOS_RATE", 250.0)
KAFKA_DOWN_S = scale("KAFKA_DOWN_S", 30.0)
AGENTS = 5
MAX_IN_FLIGHT = 200
DRAIN_S = 120 + SEGMENTS / 50


@dataclass
class Rig:
    """The brokers, the bridge and the reconciler of one proof, and the fleet feeding them."""

    workdir: Path
    mosquitto: Mosquitto
    kafka: Tansu
    bridge: Service
    bridge_metrics: int
    reconcile: Service
    reconcile_metrics: int
    store_path: Path
    fleet: Fleet | None = None
    notes: list[str] = field(default_factory=list)

    def bridge_ready(self) -> bool:
        return scrape(self.bridge_metrics).get("edgecap_bridge_mqtt_connected") == 1

    def logs(self) -> str:
        return "\n".join(s.log_tail() for s in (self.bridge, self.reconcile))


@contextmanager
def rig(tmp_path: Path, kafka: Tansu, name: str) -> Iterator[Rig]:
    mosquitto = Mosquitto(workdir=tmp_path / "mosquitto").start()
    store_path = tmp_path / "store.db"
    bridge_metrics, reconcile_metrics = free_port(), free_port()
    r = Rig(
        workdir=tmp_path,
        mosquitto=mosquitto,
        kafka=kafka,
        bridge=bridge_service(
            mosquitto, kafka.bootstrap, tmp_path, metrics_port=bridge_metrics, max_in_flight=MAX_IN_FLIGHT,
            kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap, extra={"reconnect.backoff.max.ms": 1000}),
        ),
        bridge_metrics=bridge_metrics,
        reconcile=reconcile_service(kafka.bootstrap, f"sqlite:///{store_path}", f"{name}-store", reconcile_metrics,
                                    tmp_path),
        reconcile_metrics=reconcile_metrics,
        store_path=store_path,
    )
    try:
        r.reconcile.start()
        r.bridge.start()
        wait_until(r.bridge_ready, 30, "the bridge's subscription")
        r.fleet = Fleet(AGENTS, mosquitto.port, tmp_path, name)
        yield r
    finally:
        if r.fleet is not None:
            r.fleet.close()
        r.bridge.stop()
        r.reconcile.stop()
        mosquitto.close()


_BRIDGE_COUNTS = ("dead_lettered", "kafka_refused", "deadletters_lost", "retried", "producer_restarts",
                  "delivery_failures", "errors", "produced", "acknowledged", "received")


def where_they_went(r: Rig, ids: set[str]) -> str:
    """Where the committed segments ``ids`` that are not in ``edgecap.segments`` ended: quarantined
    by their agent (the bridge rejected them), in ``edgecap.deadletter``, in the store (so Kafka
    had them after all), or nowhere (acknowledged without delivery: a real loss); with the bridge's
    counts and its warnings, to tell a refusal from a loss."""
    assert r.fleet is not None
    quarantined = {q.segment_id: q for a in r.fleet.agents for q in a.outbox.quarantined()}
    letters = read_topic(r.kafka.bootstrap, Kafka.DEADLETTER, lambda _: True, timeout_s=15, linger_s=1.0)
    lettered = {sid for sid in ids if any(sid.encode() in value for _, value in letters)}
    with sqlite3.connect(r.store_path) as db:
        stored = {sid for (sid,) in db.execute("SELECT segment_id FROM segments") if sid in ids}
    nowhere = ids - quarantined.keys() - lettered - stored
    counts = {k: v for k, v in scrape(r.bridge_metrics).items()
              if "_total" in k and any(f"bridge_{c}" in k for c in _BRIDGE_COUNTS)}
    reasons = sorted({f"{q.reason}: {q.detail}" for sid, q in quarantined.items() if sid in ids})[:5]
    links = {a.agent_id: dict(a.link.counters) for a in r.fleet.agents}
    seqs = {a.agent_id: ([seq for seq, sid in a.committed if sid in ids], len(a.committed)) for a in r.fleet.agents}
    warnings = [line for line in r.bridge.log_path.read_text(errors="replace").splitlines()
                if "WARNING" in line or "ERROR" in line]
    return (
        f"of {len(ids)}: {len(ids & quarantined.keys())} quarantined by their agent {reasons}, "
        f"{len(lettered)} in {Kafka.DEADLETTER.value} ({len(letters)} dead letters in all), "
        f"{len(stored)} in the store, {len(nowhere)} nowhere (acknowledged without delivery) e.g. "
        f"{sorted(nowhere)[:5]}; {len(quarantined)} quarantined in all; bridge counts {counts}; "
        f"their seqs by agent (of how many committed) {seqs}; agent links {links}; {'; '.join(r.notes)}"
        "\n--- bridge warnings (last 80)\n" + "\n".join(warnings[-80:])
        + f"\n{r.logs()}"
    )


def finish_and_verify(r: Rig, started: float, feed_s: float) -> None:
    """Wait for every outbox to drain, then check Kafka and the store against what was committed."""
    assert r.fleet is not None
    fleet = r.fleet
    fleet.join_feed(max(0.0, started + feed_s - time.monotonic()) + 60)
    wait_until(lambda: fleet.depth() == 0, DRAIN_S, "every outbox to drain", every_s=0.5,
               detail=lambda: f"{fleet.depth()} segments still in the outboxes\n{r.logs()}")
    drained_s = time.monotonic() - started
    assert r.bridge.alive(), r.logs()
    committed = fleet.committed()
    wanted = {sid for entries in committed.values() for _, sid in entries}
    assert len(wanted) == SEGMENTS

    seen: dict[str, None] = {}
    parsed: list[Segment] = []

    def all_there(records: list[Record]) -> bool:
        for _, value in records[len(parsed):]:
            segment = decode(value, Segment)
            parsed.append(segment)
            seen[segment.segment_id] = None
        return wanted <= seen.keys()

    read_topic(r.kafka.bootstrap, Kafka.SEGMENTS, all_there, timeout_s=120, linger_s=1.0)
    lost = wanted - seen.keys()
    assert not lost, (
        f"{len(lost)} committed segments missing in Kafka, e.g. {sorted(lost)[:5]}: {where_they_went(r, lost)}"
    )
    # a segment the bridge rejected left the outbox's depth (quarantined, kept) without reaching
    # edgecap.segments: an outage must never cause that
    quarantined = {q.segment_id for a in fleet.agents for q in a.outbox.quarantined()}
    assert not quarantined, f"{len(quarantined)} segments rejected by the bridge: {where_they_went(r, quarantined)}"
    assert seen.keys() <= wanted, "segments in Kafka that no agent committed"
    duplicates = len(parsed) - len(seen)
    first: dict[str, list[int]] = {agent: [] for agent in committed}
    firsts: set[str] = set()
    for segment in parsed:
        if segment.segment_id not in firsts:
            firsts.add(segment.segment_id)
            first[segment.agent_id].append(segment.seq)
    for agent, entries in committed.items():
        seqs = [seq for seq, _ in entries]
        if first[agent] != seqs:
            at = next(i for i, (a, b) in enumerate(zip(first[agent], seqs, strict=True)) if a != b)
            every = [sg.seq for sg in parsed if sg.agent_id == agent]
            where = every.index(first[agent][at])
            pytest.fail(f"{agent}: first occurrences in Kafka out of seq order from index {at}: "
                        f"{first[agent][max(0, at - 3):at + 12]}; all its records from there: "
                        f"{every[max(0, where - 5):where + 60]}; {'; '.join(r.notes)}\n{r.logs()}")

    # downstream: the real reconciler stored each draft once, whatever number of copies it read.
    # It is done once the store holds every committed segment and it has handled as many segment
    # records as Kafka holds (the late duplicates too). The count alone cannot tell it: a record it
    # handles twice (a batch retried, or re-read after the group lost its assignment while Kafka
    # was away) counts as a duplicate draft too, so the count reaches the number of records
    # before the last segments are stored.
    def handled(outcome: str) -> float:
        m = scrape(r.reconcile_metrics)
        return m.get(f'edgecap_worker_records_total{{outcome="{outcome}",worker="reconcile"}}', 0)

    def stored_ids() -> set[str]:
        with sqlite3.connect(r.store_path) as db:
            return {sid for (sid,) in db.execute("SELECT segment_id FROM segments")}

    def reconciled() -> bool:
        return handled("draft") + handled("duplicate_draft") >= len(parsed) and wanted <= stored_ids()

    wait_until(reconciled, 120, "the reconciler to store every segment and handle every record", every_s=0.5,
               detail=lambda: f"{len(wanted - stored_ids())} segments not stored, e.g. "
               f"{sorted(wanted - stored_ids())[:5]}; {handled('draft'):.0f} drafts stored and "
               f"{handled('duplicate_draft'):.0f} duplicate drafts of {len(parsed)} records\n{r.logs()}")
    stored_drafts, duplicate_drafts = handled("draft"), handled("duplicate_draft")
    with sqlite3.connect(r.store_path) as db:
        rows = db.execute("SELECT segment_id, count(*) FROM segments GROUP BY segment_id").fetchall()
        versions = db.execute(
            "SELECT segment_id, count(*) FROM caption_versions WHERE version = 1 GROUP BY segment_id"
        ).fetchall()
    missing = wanted - {sid for sid, _ in rows}
    assert not missing, f"{len(missing)} segments not in the store, e.g. {sorted(missing)[:5]}\n{r.logs()}"
    assert {sid for sid, _ in rows} == wanted and all(n == 1 for _, n in rows)
    assert {sid for sid, _ in versions} == wanted and all(n == 1 for _, n in versions)
    assert stored_drafts == len(wanted), f"{stored_drafts:.0f} drafts stored for {len(wanted)} segments"
    bm = scrape(r.bridge_metrics)
    print(
        f"{r.bridge.name}: {len(wanted)} committed by {AGENTS} agents, 0 lost, {duplicates} duplicates in "
        f"{Kafka.SEGMENTS.value} ({len(parsed)} records), store {len(rows)} rows "
        f"(reconciler: {stored_drafts:.0f} stored, {duplicate_drafts:.0f} duplicate drafts, of which "
        f"{duplicate_drafts - duplicates:.0f} records handled again), "
        f"drained after {drained_s:.1f} s; last bridge: {bm.get('edgecap_bridge_duplicates_total', 0):.0f} "
        f"duplicates seen, {bm.get('edgecap_bridge_retried_total', 0):.0f} retried, "
        f"{bm.get('edgecap_bridge_delivery_failures_total', 0):.0f} delivery failures, "
        f"{bm.get('edgecap_bridge_producer_restarts_total', 0):.0f} producer restarts; {'; '.join(r.notes)}"
    )


def run_chaos(r: Rig, rate: float, chaos: Callable[[Rig, float], None]) -> None:
    assert r.fleet is not None
    started = time.monotonic()
    r.fleet.feed(SEGMENTS, rate)
    chaos(r, started)
    finish_and_verify(r, started, SEGMENTS / rate)


def test_bridge_killed_repeatedly(tmp_path: Path) -> None:
    rng = random.Random(4)

    def kill_bridge(r: Rig, _started: float) -> None:
        assert r.fleet is not None
        kills = 0
        while r.fleet.feeding() or kills < 3:
            wait_until(r.bridge_ready, 30, "the restarted bridge")
            time.sleep(rng.uniform(1.0, 4.0))
            r.bridge.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            r.bridge.start()
        r.notes.append(f"bridge SIGKILLed {kills} times")

    with Tansu() as kafka, rig(tmp_path, kafka, "chaos-bridge") as r:
        run_chaos(r, RATE, kill_bridge)


def test_mosquitto_killed_midrun(tmp_path: Path) -> None:
    rng = random.Random(5)
    kills_wanted = 2

    def kill_mosquitto(r: Rig, started: float) -> None:
        assert r.fleet is not None
        feed_s = SEGMENTS / RATE
        for k in range(kills_wanted):
            time.sleep(max(0.0, started + feed_s * (k + 1) / (kills_wanted + 1) - time.monotonic()))
            r.mosquitto.kill()
            down_s = rng.uniform(1.0, 3.0)
            r.notes.append(f"mosquitto killed at {time.monotonic() - started:.1f} s for {down_s:.1f} s")
            time.sleep(down_s)
            r.mosquitto.start()
        r.notes.append(f"mosquitto SIGKILLed {kills_wanted} times")

    with Tansu() as kafka, rig(tmp_path, kafka, "chaos-mqtt") as r:
        run_chaos(r, RATE, kill_mosquitto)


def test_kafka_down_30s(tmp_path: Path) -> None:
    lead_s, tail_s = 5.0, 10.0
    rate = min(RATE, SEGMENTS / (lead_s + KAFKA_DOWN_S + tail_s))

    def kafka_down(r: Rig, started: float) -> None:
        time.sleep(max(0.0, started + lead_s - time.monotonic()))
        before = scrape(r.bridge_metrics)
        rss_before = r.bridge.rss_mb() or 0.0
        r.kafka.pause()
        down_at = time.monotonic()
        peak_in_flight = peak_held = 0.0
        peak_rss = rss_before
        while time.monotonic() - down_at < KAFKA_DOWN_S:
            m = scrape(r.bridge_metrics)
            assert r.bridge.alive(), r.logs()
            if m:
                peak_in_flight = max(peak_in_flight, m["edgecap_bridge_in_flight"])
                peak_held = max(
                    peak_held, m["edgecap_bridge_received_total"] - m["edgecap_bridge_acknowledged_total"]
                )
            peak_rss = max(peak_rss, r.bridge.rss_mb() or 0.0)
            time.sleep(0.5)
        during = scrape(r.bridge_metrics)
        r.kafka.resume()
        r.notes.append(
            f"Kafka down {KAFKA_DOWN_S:.0f} s: bridge held at most {peak_in_flight:.0f} in flight "
            f"(limit {MAX_IN_FLIGHT}), {peak_held:.0f} received-not-acked, RSS {rss_before:.0f} -> peak "
            f"{peak_rss:.0f} MB, acked during outage "
            f"{during['edgecap_bridge_acknowledged_total'] - before['edgecap_bridge_acknowledged_total']:.0f}"
        )
        assert peak_in_flight > 0, "the outage did not reach the bridge"
        assert peak_in_flight <= MAX_IN_FLIGHT
        assert peak_held <= MAX_IN_FLIGHT + 1, "the bridge kept taking messages it could not deliver"
        assert peak_rss - rss_before < 100, f"bridge RSS grew {peak_rss - rss_before:.0f} MB while Kafka was down"

    with Tansu() as kafka, rig(tmp_path, kafka, "chaos-kafka") as r:
        run_chaos(r, rate, kafka_down)
