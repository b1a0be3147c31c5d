"""The bridge against real mosquitto and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents_sim import bridge_service
from confluent_kafka import Producer
from support import (
    REPO,
    Agent,
    bridge_settings,
    make_segment,
    read_keyed,
    read_topic,
    scrape,
    service_env,
    unique,
    wait_until,
)

from bridge.app import Bridge
from bridge.receipts import ReceiptBook
from bridge.settings import BridgeSettings
from contracts import (
    DeadLetter,
    Detection,
    Detections,
    Final,
    Kafka,
    Reason,
    Rejection,
    Segment,
    Transcript,
    Up,
    decode,
    encode,
    mqtt_topic,
    new_segment_id,
)
from devtools.brokers import Mosquitto, Tansu, free_port

# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def agent(mosquitto: Mosquitto) -> Iterator[Agent]:
    a = Agent(mosquitto.port, unique("pi-a"))
    yield a
    a.close()


# --- uplink ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_segment_reaches_kafka_and_is_receipted(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap)) as bridge:
        assert bridge.wait_ready(10)
        segment = make_segment(agent.agent_id, 0)
        raw = encode(segment)
        agent.publish(raw)
        wait_until(lambda: segment.segment_id in agent.accepted(), 15, "the receipt")

        assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id) == [raw]  # byte-identical
        stats = bridge.stats()
        assert stats["received"] == 1 and stats["acknowledged"] == 1
        # one record per segment: the reconciler takes the draft from it (no edgecap.drafts record)
        assert stats["produced"] == {Kafka.SEGMENTS.value: 1}
        assert stats["receipts"] >= 1 and stats["in_flight"] == 0
        assert stats["delivery_seconds_count"] == 1


@pytest.mark.integration
def test_many_segments_all_receipted_in_order(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    n = 200
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, max_in_flight=50)) as bridge:
        assert bridge.wait_ready(10)
        sent = [make_segment(agent.agent_id, seq, draft=seq % 2 == 0) for seq in range(n)]
        for s in sent:
            agent.client.publish(mqtt_topic(agent.agent_id, Up.SEGMENTS), encode(s), qos=1)
        wait_until(lambda: len(set(agent.accepted())) == n, 30, f"receipts for {n} segments")
        assert set(agent.accepted()) == {s.segment_id for s in sent}
        assert all(len(r.accepted) <= 100 for r in agent.receipts)

        seqs = [decode(v, Segment).seq for v in read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, n)]
        assert seqs == list(range(n))  # all there, once, in per-agent order
        assert bridge.stats()["duplicates"] == 0
        assert bridge.stats()["produced"] == {Kafka.SEGMENTS.value: n}


@pytest.mark.integration
def test_bad_inputs_are_dead_lettered_and_rejected(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    spoofed = make_segment(unique("pi-b"), 0)
    wrong_rate = make_segment(agent.agent_id, 1, sample_rate=8000)
    oversize = make_segment(agent.agent_id, 2, seconds=5.0)  # 160 kB of PCM, ~214 kB as JSON
    truncated = make_segment(agent.agent_id, 3)
    valid = make_segment(agent.agent_id, 4)
    cases = [
        (encode(spoofed), Reason.SPOOFED_AGENT, spoofed.segment_id),
        (b"{this is not json", Reason.BAD_JSON, None),
        (encode(truncated)[:300], Reason.BAD_JSON, truncated.segment_id),
        (encode(wrong_rate), Reason.BAD_AUDIO, wrong_rate.segment_id),
        (encode(oversize), Reason.TOO_LARGE, oversize.segment_id),
    ]
    topic = mqtt_topic(agent.agent_id, Up.SEGMENTS)
    settings = bridge_settings(mosquitto, kafka.bootstrap, max_message_bytes=100_000, deadletter_payload_bytes=1000)
    with Bridge(settings) as bridge:
        assert bridge.wait_ready(10)
        for raw, _, _ in cases:
            agent.publish(raw)
        agent.publish(encode(valid))
        expected_rejections = {sid: reason.value for _, reason, sid in cases if sid is not None}
        wait_until(
            lambda: agent.rejected() == expected_rejections and valid.segment_id in agent.accepted(),
            15,
            "rejections and the valid segment's receipt",
        )

        def mine(records: list[tuple[bytes | None, bytes]]) -> list[DeadLetter]:
            letters = [decode(v, DeadLetter) for _, v in records]
            return [d for d in letters if d.source == topic]

        letters = mine(read_topic(kafka.bootstrap, Kafka.DEADLETTER, lambda r: len(mine(r)) >= len(cases)))
        assert [d.reason for d in letters] == [reason.value for _, reason, _ in cases]
        assert all(d.agent_id == agent.agent_id and d.detail for d in letters)
        assert letters[0].payload == cases[0][0][:1000] and letters[0].truncated
        assert letters[1].payload == b"{this is not json" and not letters[1].truncated
        assert "8000" in letters[3].detail
        stats = bridge.stats()
        assert stats["dead_lettered"] == {"spoofed_agent": 1, "bad_json": 2, "bad_audio": 1, "too_large": 1}
        assert stats["acknowledged"] == len(cases) + 1
        assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id) == [encode(valid)]


def crafted_payloads(agent_id: str) -> list[bytes]:
    """JSON made to break parsers rather than to pass for a segment: deep nesting (a recursion limit),
    huge numbers, NaN, duplicate keys, invalid UTF-8, lone surrogates, a segment id worth reading."""
    sid = new_segment_id()
    head = f'{{"schema":"edgecap.segment.v1","agent_id":"{agent_id}","segment_id":"{sid}"'.encode()
    return [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"segment_id":' * 20_000 + b'"x"' + b"}" * 20_000,
        head + b',"payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        head + b',"seq":' + b"9" * 5000 + b"}",
        head + b',"seq":1e999999}',
        head + b',"seq":NaN,"started_at":-Infinity}',
        head + b',"seq":1,"seq":2}',
        head + b',"agent_id":"\\ud800"}',
        b'{"segment_id":"\xff\xfe' + bytes(range(128, 256)) + b'"}',
        head + b"}" + b"\x00" * 10,
    ]


@pytest.mark.integration
def test_crafted_json_is_dead_lettered_and_never_wedges_the_bridge(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent
) -> None:
    """Hundreds of crafted payloads: each one refused, dead-lettered and acknowledged (none left in the
    broker's in-flight window), and valid segments behind them still flow."""
    payloads = crafted_payloads(agent.agent_id) * 30
    settings = bridge_settings(mosquitto, kafka.bootstrap, max_in_flight=20, deadletter_payload_bytes=100)
    with Bridge(settings) as bridge:
        assert bridge.wait_ready(10)
        for raw in payloads:
            agent.publish(raw)
        valid = [make_segment(agent.agent_id, seq) for seq in range(5)]
        for segment in valid:
            agent.publish(encode(segment))
        wait_until(
            lambda: {s.segment_id for s in valid} <= set(agent.accepted()), 60, "the valid segments' receipts"
        )
        wait_until(lambda: bridge.stats()["acknowledged"] == len(payloads) + len(valid), 30, "every ack")
        stats = bridge.stats()
        assert stats["errors"] == 0
        assert sum(stats["dead_lettered"].values()) == len(payloads)
        assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, len(valid)) == [encode(s) for s in valid]


@pytest.mark.integration
def test_a_bug_in_a_check_refuses_the_message_instead_of_leaving_it_unacknowledged(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a check raises, the message is dead-lettered (invalid, with the error), acknowledged
    and counted as an error; the next message goes through."""
    import bridge.uplink

    real_check = bridge.uplink.check_segment
    poisoned = make_segment(agent.agent_id, 0)

    def check_with_a_bug(raw: bytes, agent_id: str, **limits: object) -> Segment:
        if poisoned.segment_id.encode() in raw:
            raise KeyError("a bug")
        return real_check(raw, agent_id, **limits)  # type: ignore[arg-type]

    monkeypatch.setattr(bridge.uplink, "check_segment", check_with_a_bug)
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap)) as bridge:
        assert bridge.wait_ready(10)
        valid = make_segment(agent.agent_id, 1)
        agent.publish(encode(poisoned))
        agent.publish(encode(valid))
        wait_until(lambda: agent.rejected().get(poisoned.segment_id) == "invalid", 15, "the rejection")
        wait_until(lambda: valid.segment_id in agent.accepted(), 15, "the next segment's receipt")
        wait_until(lambda: bridge.stats()["acknowledged"] == 2, 15, "both acknowledged")
        assert bridge.stats()["errors"] == 1 and bridge.stats()["dead_lettered"] == {"invalid": 1}


@pytest.mark.integration
def test_repeated_segment_is_forwarded_and_counted(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap)) as bridge:
        assert bridge.wait_ready(10)
        raw = encode(make_segment(agent.agent_id, 0))
        agent.publish(raw)
        agent.publish(raw)  # the agent resends: no receipt seen yet, say
        wait_until(lambda: bridge.stats()["acknowledged"] == 2, 15, "both copies acknowledged")
        assert bridge.stats()["duplicates"] == 1
        assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, 2) == [raw, raw]


@pytest.mark.integration
def test_replays_and_seq_regressions_are_counted_and_forwarded(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent
) -> None:
    """A replayed id counts as a duplicate; a new id with a seq at or below the agent's highest counts
    as a regression (a resend after a failover, or a reset outbox); both still reach Kafka."""
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap)) as bridge:
        assert bridge.wait_ready(10)
        five, six, three, seven = (make_segment(agent.agent_id, seq) for seq in (5, 6, 3, 7))
        sent = [encode(five), encode(six), encode(five), encode(three), encode(seven)]
        for raw in sent:
            agent.publish(raw)
        wait_until(lambda: bridge.stats()["acknowledged"] == len(sent), 15, "every message acknowledged")
        stats = bridge.stats()
        assert (stats["duplicates"], stats["seq_regressions"]) == (1, 1)
        assert read_keyed(kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, len(sent)) == sent
        wait_until(lambda: set(agent.accepted()) == {s.segment_id for s in (five, six, three, seven)}, 10, "receipts")


@pytest.mark.integration
def test_back_pressure_while_kafka_is_down(mosquitto: Mosquitto, agent: Agent) -> None:
    """With Kafka unreachable the bridge holds at most max_in_flight messages, then catches up."""
    later_kafka = Tansu(port=free_port())
    settings = bridge_settings(mosquitto, later_kafka.bootstrap, max_in_flight=5)
    settings.kafka.extra["reconnect.backoff.max.ms"] = 500
    sent = [make_segment(agent.agent_id, seq) for seq in range(20)]
    try:
        with Bridge(settings) as bridge:
            assert bridge.wait_ready(10)
            for s in sent:
                agent.publish(encode(s))
            wait_until(lambda: bridge.stats()["in_flight"] == 5, 10, "a full in-flight window")
            # QoS 0 passes the broker's window for the bridge (its receive maximum), behind whatever the
            # broker sent the bridge before: once the bridge has refused it, anything more it took is counted
            agent.client.publish(mqtt_topic(agent.agent_id, Up.SEGMENTS), b"not a segment", qos=0)
            wait_until(lambda: bridge.stats()["dead_lettered"].get(Reason.BAD_JSON.value) == 1, 10, "the QoS 0 message")
            stats = bridge.stats()
            print("held while Kafka is down:", stats["received"], "received,", stats["in_flight"], "in flight")
            assert stats["in_flight"] == 5 and stats["received"] == 6 and stats["acknowledged"] == 0
            later_kafka.start()
            wait_until(lambda: len(set(agent.accepted())) == len(sent), 30, "every segment receipted")
            assert bridge.stats()["in_flight"] == 0
        records = read_keyed(later_kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id, len(sent))
        assert [decode(v, Segment).seq for v in records] == list(range(len(sent)))
    finally:
        later_kafka.kill()  # in-memory; SIGTERM takes Tansu ~5 s
        later_kafka.close()


def test_receipts_batch_by_time_and_size() -> None:
    now = [100.0]
    book = ReceiptBook(interval_s=0.02, max_ids=3, clock=lambda: now[0])
    book.accept("pi-a", "s1")
    book.reject("pi-a", Rejection(segment_id="s2", reason="bad_json"))
    book.accept("pi-b", "s3")
    assert book.due() == []  # nothing old enough, nothing full
    book.accept("pi-a", "s4")  # pi-a's batch is full now
    [full] = book.due()
    assert (full.agent_id, full.accepted, [r.segment_id for r in full.rejected]) == ("pi-a", ["s1", "s4"], ["s2"])
    now[0] += 0.05
    [late] = book.due()
    assert (late.agent_id, late.accepted) == ("pi-b", ["s3"]) and book.pending() == 0


@pytest.mark.integration
def test_reconnects_after_mqtt_broker_restart(kafka: Tansu, tmp_path: Path) -> None:
    broker = Mosquitto(workdir=tmp_path / "mosquitto").start()
    agent = None
    try:
        with Bridge(bridge_settings(broker, kafka.bootstrap)) as bridge:
            assert bridge.wait_ready(10)
            broker.kill()
            wait_until(lambda: not bridge.stats()["mqtt_connected"], 10, "the bridge to notice")
            broker.start()
            wait_until(lambda: bridge.stats()["mqtt_connected"] == 1, 20, "the bridge to resubscribe")
            assert bridge.stats()["reconnects"][bridge.settings.client_id] == 1
            agent = Agent(broker.port, unique("pi-r"))
            segment = make_segment(agent.agent_id, 0)
            agent.publish(encode(segment))
            wait_until(lambda: segment.segment_id in agent.accepted(), 15, "a receipt after the reconnect")
    finally:
        if agent is not None:
            agent.close()
        broker.close()


# --- crash: redelivery from the persistent session ------------------------------------------


@pytest.mark.integration
def test_killed_bridge_gets_message_redelivered(mosquitto: Mosquitto, agent: Agent, tmp_path: Path) -> None:
    """The bridge dies before Kafka confirmed; the restarted one gets the message from its session."""
    later_kafka = Tansu(port=free_port())  # not up yet: nothing can be confirmed
    metrics_port = free_port()
    bridge = bridge_service(mosquitto, later_kafka.bootstrap, tmp_path, "--debug", metrics_port=metrics_port)
    bridge.start()
    try:
        wait_until(lambda: scrape(metrics_port).get("edgecap_bridge_mqtt_connected") == 1, 20, "first bridge")
        raw = encode(make_segment(agent.agent_id, 0))
        agent.publish(raw)
        wait_until(lambda: scrape(metrics_port).get("edgecap_bridge_received_total") == 1, 10, "receipt by bridge")
        m = scrape(metrics_port)
        assert m["edgecap_bridge_acknowledged_total"] == 0 and m["edgecap_bridge_in_flight"] == 1
        bridge.kill()

        later_kafka.start()
        bridge.start()
        wait_until(lambda: bool(agent.accepted()), 30, "the receipt from the restarted bridge")
        m = scrape(metrics_port)
        assert m["edgecap_bridge_received_total"] >= 1 and m["edgecap_bridge_acknowledged_total"] >= 1
        records = read_keyed(later_kafka.bootstrap, Kafka.SEGMENTS, agent.agent_id)
        assert records and all(r == raw for r in records)  # at least once; a duplicate is the same bytes
        assert bridge.stop() == 0, bridge.log_tail()
    finally:
        bridge.kill()
        later_kafka.kill()  # in-memory; SIGTERM takes Tansu ~5 s
        later_kafka.close()


# --- downlink --------------------------------------------------------------------------------


@pytest.mark.integration
def test_final_reaches_agent_captions(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    now = time.time()
    final = Final(
        agent_id=agent.agent_id,
        segment_id=new_segment_id(),
        seq=0,
        started_at=now,
        ended_at=now + 1,
        text="hello from the cloud",
        source="cloud",
        version=2,
        transcript=Transcript(text="hello from the cloud", model_id="whisper-test", produced_at=now),
        draft_text="hello from the clod",
    )
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(Kafka.FINALS.value, key=agent.agent_id, value=b"\x00 not a final")
    producer.produce(Kafka.FINALS.value, key=agent.agent_id, value=encode(final))
    assert producer.flush(10) == 0
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, downlink=True)) as bridge:
        wait_until(lambda: bool(agent.captions), 30, "the caption")
        assert agent.captions == [encode(final)]
        assert decode(agent.captions[0], Final).text == "hello from the cloud"
        wait_until(lambda: bridge.stats()["dead_lettered"].get("bad_json", 0) >= 1, 10, "the dead letter")
        # the agent can hold the caption before the bridge has read the broker's PUBACK
        wait_until(lambda: bridge.stats()["downlink_published"] >= 1, 10, "the PUBACK count")

    def mine(records: list[tuple[bytes | None, bytes]]) -> list[DeadLetter]:
        letters = [decode(v, DeadLetter) for _, v in records]
        return [d for d in letters if d.source == Kafka.FINALS.value and d.agent_id == agent.agent_id]

    letters = mine(read_topic(kafka.bootstrap, Kafka.DEADLETTER, lambda r: bool(mine(r))))
    assert letters[0].payload == b"\x00 not a final" and letters[0].reason == Reason.BAD_JSON.value


# --- settings --------------------------------------------------------------------------------


def _run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_prints_settings_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('max_audio_s = 12.5\n[mqtt]\nhost = "broker.local"\n')
    done = _run_main(
        "--config",
        str(config),
        "--check-config",
        env={"EDGECAP_BRIDGE_MQTT__PORT": "18883", "EDGECAP_BRIDGE_MQTT__PASSWORD": "hunter2"},
    )
    assert done.returncode == 0, done.stderr
    shown = BridgeSettings.model_validate_json(done.stdout.replace('"**********"', "null"))
    assert shown.mqtt.host == "broker.local" and shown.mqtt.port == 18883 and shown.max_audio_s == 12.5
    assert "hunter2" not in done.stdout


def test_unknown_setting_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("max_audio_s = 10\nmax_audoi_s = 12\n")
    done = _run_main("--config", str(config), "--check-config")
    assert done.returncode != 0
    assert "max_audoi_s: not a known setting" in done.stderr


@pytest.mark.integration
def test_a_dead_thread_makes_the_bridge_unhealthy_and_exit_non_zero(
    mosquitto: Mosquitto, kafka: Tansu, agent: Agent, tmp_path: Path
) -> None:
    """No half-alive bridge: when its downlink thread dies (a fault injected into the real process),
    the bridge sets its ``healthy`` metric to 0, says why, and exits with 70 for its supervisor to
    restart it (it used to log the error and run on without a downlink)."""
    port = free_port()
    settings = bridge_settings(mosquitto, kafka.bootstrap, downlink=True, metrics_port=port)
    fault = (
        "import sys, bridge.downlink as d\n"
        "def broken(self, consumer, records):\n"
        "    raise RuntimeError('injected fault')\n"
        "d.Downlink._deliver = broken\n"
        "from bridge.__main__ import main\n"
        "sys.exit(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")} | service_env(settings)
    log = tmp_path / "bridge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", fault], cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: scrape(port).get("edgecap_bridge_healthy") == 1.0, 30, "a healthy bridge")
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        final = Final(
            **make_segment(agent.agent_id, 0).header(), text="x", source="cloud", version=2,
            transcript=Transcript(text="x", model_id="m", produced_at=time.time()),
        )
        producer.produce(Kafka.FINALS.value, key=agent.agent_id, value=encode(final))
        producer.flush(10)
        assert proc.wait(60) == 70, log.read_text()[-3000:]
        assert "the downlink thread died" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_detections_go_down_only_to_a_device_that_asked(mosquitto: Mosquitto, kafka: Tansu, agent: Agent) -> None:
    def found(summary: bool) -> Detections:
        now = time.time()
        cat = Detection(label="cat", class_id=15, score=0.9, x1=1, y1=2, x2=30, y2=40)
        return Detections(agent_id=agent.agent_id, segment_id=new_segment_id(), seq=1, captured_at=now, width=64,
                          height=48, boxes=[cat], model_id="m", worker="w", detected_at=now, summary=summary)

    asked, unasked = found(True), found(False)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for value in (encode(unasked), encode(asked), b"{not json"):
        producer.produce(Kafka.DETECTIONS.value, key=agent.agent_id, value=value)
    assert producer.flush(10) == 0
    with Bridge(bridge_settings(mosquitto, kafka.bootstrap, downlink=True)) as bridge:
        wait_until(lambda: bool(agent.detections), 30, "the asked-for detections")
        wait_until(lambda: bridge.stats()["dead_lettered"].get("bad_json", 0) >= 1, 10, "the dead letter")
        assert bridge.stats()["downlink_skipped"] >= 1
        assert [decode(d, Detections) for d in agent.detections] == [asked]

