"""The cloud's crash proof with real processes (issue 9 §4): one final per segment, none lost, every
final back on its device, while the transcriber and the reconciler are SIGKILLed every few seconds.

Five simulated agents (the real outbox and MQTT link, :mod:`agents_sim`) commit segments at a steady
rate through mosquitto and the real bridge into Kafka. The transcription worker and the reconciler
(``python -m cloud_procs``: the real ``edgecap worker`` processes; the transcriber with the
``echo-test`` engine, since Whisper cannot take 10,000 segments and a dozen restarts in a test's time
on two cores) are killed in turn every 2-5 s and restarted, as their supervisor would. The
reconciler's first life ends between the store's commit of a final and its delivery to Kafka
(``--die-after-finals``): the restarted one must find the final stored but unpublished and send it.

Afterwards: every committed segment has exactly one final in the store (one version 2), marked
published; every copy of a segment's final in ``edgecap.finals`` is the same final; every agent got
the final of each of its segments back; nothing was dead-lettered. Sizes:
``EDGECAP_TEST_CLOUD_CHAOS_SEGMENTS`` (default 10000, the issue's proof) at
``EDGECAP_TEST_CLOUD_CHAOS_RATE`` segments/s (default 250).
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
from agents_sim import Fleet, Service, bridge_service
from cloud_procs import cloud_worker
from support import keyed, read_topic, scale, scrape, unique, wait_until

from cloud.settings import WorkerSettings
from contracts import Final, Kafka, decode
from devtools.brokers import Mosquitto, Tansu, free_port
from runtime.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.proof]

SEGMENTS = scale("CLOUD_CHAOS_SEGMENTS", 10000)
RATE = scale("CLOUD_CHAOS_RATE", 250.0)
AGENTS = 5
DIE_AFTER_FINALS = max(1, SEGMENTS // 100)  # the reconciler's first life ends between store and Kafka
DONE_S = 300 + SEGMENTS / 20


def test_transcriber_and_reconciler_killed_repeatedly(tmp_path: Path) -> None:
    rng = random.Random(9)
    store_path = tmp_path / "store.db"
    metrics = {"bridge": free_port(), "transcribe": free_port(), "reconcile": free_port()}
    with Tansu() as kafka, Mosquitto(workdir=tmp_path / "mosquitto") as mosquitto:
        kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, extra={"reconnect.backoff.max.ms": 1000})

        def worker(name: str, **values: object) -> WorkerSettings:
            return WorkerSettings.load(
                kafka=kafka_settings, store_url=f"sqlite:///{store_path}", group=unique(f"chaos-{name}"),
                session_timeout_ms=3000, topic_partitions=4, metrics_port=metrics[name], **values,
            )  # fmt: skip

        bridge = bridge_service(mosquitto, kafka.bootstrap, tmp_path, metrics_port=metrics["bridge"],
                                kafka=kafka_settings, downlink=True, downlink_session_timeout_ms=3000)  # fmt: skip
        transcribe = cloud_worker("transcribe", worker("transcribe", batch_size=32, max_wait_ms=50), tmp_path,
                                  engine="echo-test")  # fmt: skip
        # a day's deadline: this proof is about crashes (one version 2 each); the deadline has its own tests
        reconcile = cloud_worker("reconcile", worker("reconcile", final_deadline_s=86400), tmp_path,
                                 "--die-after-finals", str(DIE_AFTER_FINALS))  # fmt: skip
        services: list[Service] = [bridge, transcribe, reconcile]
        fleet: Fleet | None = None
        kills = {"transcribe": 0, "reconcile": 0}
        died_by_themselves = 0

        def logs() -> str:
            return "\n".join(s.log_tail() for s in services)

        def supervise() -> None:
            """Restart whatever died by itself (its supervisor would); the reconciler's later lives
            run plain. (The test restarts what it kills itself.)"""
            nonlocal died_by_themselves
            for s in services:
                if not s.alive():
                    if s is reconcile and "--die-after-finals" in s.argv:
                        died_by_themselves += 1
                        s.argv = s.argv[: s.argv.index("--die-after-finals")]
                    s.start()

        try:
            for s in services:
                s.start()
            wait_until(lambda: scrape(metrics["bridge"]).get("edgecap_bridge_mqtt_connected") == 1, 30,
                       "the bridge's subscription", detail=logs)  # fmt: skip
            fleet = Fleet(AGENTS, mosquitto.port, tmp_path, unique("cloud-chaos"))
            started = time.monotonic()
            fleet.feed(SEGMENTS, RATE)

            def finals_back() -> int:
                assert fleet is not None
                return sum(a.finals_back() for a in fleet.agents)

            # chaos while the fleet feeds, and at least three kills of each worker
            # the reconciler is not killed before its first life ended between the store and Kafka
            while fleet.feeding() or min(kills.values()) < 3:
                deadline = time.monotonic() + rng.uniform(2.0, 5.0)
                while time.monotonic() < deadline:
                    supervise()
                    time.sleep(0.1)
                supervise()
                victim = reconcile if died_by_themselves and kills["reconcile"] < kills["transcribe"] else transcribe
                victim.kill()
                kills[victim.name] += 1
                time.sleep(rng.uniform(0.0, 0.5))
                victim.start()
            fleet.join_feed(60)
            chaos_s = time.monotonic() - started

            def all_back() -> bool:
                supervise()
                return finals_back() >= SEGMENTS

            wait_until(all_back, DONE_S, "every final back on its device", every_s=0.5,
                       detail=lambda: f"{finals_back()} of {SEGMENTS} finals back\n{logs()}")  # fmt: skip
            done_s = time.monotonic() - started
            committed = {a.agent_id: {sid for _, sid in a.committed} for a in fleet.agents}
            assert sum(len(ids) for ids in committed.values()) == SEGMENTS

            # every final on its device: for each of its segments, and only its own
            for agent in fleet.agents:
                assert set(agent.finals) == committed[agent.agent_id], f"{agent.agent_id}: finals missing or foreign"
                for sid, copies in agent.finals.items():
                    assert all(f == copies[0] and f.agent_id == agent.agent_id for f in copies), sid
            duplicates_on_devices = sum(len(c) - 1 for a in fleet.agents for c in a.finals.values())

            # one final per segment in the store, each marked published
            with sqlite3.connect(store_path) as db:
                rows = db.execute(
                    "SELECT agent_id, segment_id, final_version, final_published_at FROM segments"
                ).fetchall()
                finals_stored = db.execute("SELECT count(*) FROM caption_versions WHERE version = 2").fetchone()[0]
            stored = {(a, s) for a, s, _, _ in rows}
            wanted = {(agent, sid) for agent, ids in committed.items() for sid in ids}
            assert stored == wanted and len(rows) == SEGMENTS
            assert all(v == 2 and published is not None for _, _, v, published in rows)
            assert finals_stored == SEGMENTS

            # every copy of a final in Kafka is the same final
            records = read_topic(kafka.bootstrap, Kafka.FINALS, lambda r: len(r) >= SEGMENTS, timeout_s=60)
            by_segment: dict[tuple[str, str], set[str]] = {}
            for _, value in records:
                final = decode(value, Final)
                by_segment.setdefault((final.agent_id, final.segment_id), set()).add(final.model_dump_json())
            assert by_segment.keys() == wanted and all(len(v) == 1 for v in by_segment.values())
            dead = read_topic(kafka.bootstrap, Kafka.DEADLETTER, lambda _r: True, timeout_s=10, linger_s=1.0)
            assert not [v for a in committed for v in keyed(dead, a)], "segments were dead-lettered"

            # the kill between the store's commit and the delivery happened, and was made good
            assert died_by_themselves == 1, logs()
            assert "stored, not sent: SIGKILL" in reconcile.log_path.read_text()
            assert "was stored but never published: sending it now" in reconcile.log_path.read_text()
            print(
                f"cloud chaos: {SEGMENTS} segments from {AGENTS} agents at {RATE:.0f}/s; transcriber SIGKILLed "
                f"{kills['transcribe']} times, reconciler {kills['reconcile']} + 1 (between store and Kafka); "
                f"0 lost, one final each ({len(records) - SEGMENTS} duplicate records in {Kafka.FINALS.value}, "
                f"{duplicates_on_devices} duplicates on devices); chaos {chaos_s:.0f} s, all finals back "
                f"after {done_s:.0f} s"
            )
        finally:
            if fleet is not None:
                fleet.close()
            for s in services:
                s.stop()
