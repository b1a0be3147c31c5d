"""Bad input proof with real processes: malformed messages are refused with the right reason, and
neither crash the bridge nor slow the valid traffic down.

``python -m bridge`` runs against a real mosquitto and Kafka-protocol broker. Five simulated agents
(the real outbox + MQTT link) send valid segments as fast as their receipts allow, in rounds:
clean, then mixed with malformed messages from a client publishing on other devices' topics
(truncated, oversize, wrong sample rate, bad JSON, spoofed agent id, random bytes, wrong schema,
invalid fields), alternating. Checks: the bridge process stays alive with no handler error; every
malformed message is in ``edgecap.deadletter`` with the reason its kind calls for (counts by reason
equal what was sent, in the bridge's metrics too); those that name a segment id are rejected in a
receipt; every valid segment is receipted and in ``edgecap.segments``; and valid throughput with the malformed traffic
against without it, two ways (both printed):

- **paced** (the operating point): the agents offer valid segments at half the clean saturated
  rate; mixed rounds must deliver them as fast as clean rounds (within 5 %) and receipt the last
  one as soon after it was committed;
- **saturated**: agents send as fast as receipts allow. On a machine whose cores the agents, the
  brokers, the attacker and the bridge all share, the malformed traffic's own CPU shows here.

Sizes: ``EDGECAP_TEST_BADINPUT_MESSAGES`` malformed in all (default 10000, the issue's proof),
``EDGECAP_TEST_BADINPUT_VALID`` valid segments per round (default 2000).
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from agents_sim import Fleet, bridge_service
from support import Record, make_segment, read_topic, scale, scrape, wait_until

from contracts import (
    DeadLetter,
    Down,
    Reason,
    Receipt,
    Segment,
    Status,
    Up,
    decode,
    encode,
    mqtt_topic,
)
from contracts import Kafka as KafkaTopic
from devtools.brokers import Mosquitto, Tansu, free_port

pytestmark = [pytest.mark.integration, pytest.mark.proof, pytest.mark.perf]

MALFORMED = scale("BADINPUT_MESSAGES", 10000)
VALID_PER_ROUND = scale("BADINPUT_VALID", 2000)
ROUNDS = 3  # saturated rounds of each kind, alternating clean and mixed
PACED_ROUNDS = 3  # then paced rounds of each kind, alternating (medians: one stall does not decide)
PACED_LOAD = 0.5  # offered valid rate in paced rounds, as a fraction of the clean saturated rate
AGENTS = 5
ATTACKERS = [f"evil-{i}" for i in range(4)]
MAX_BYTES = 64 * 1024


# --- malformed messages: (payload, expected reason, segment id it names or None) --------------

Bad = tuple[bytes, Reason, str | None]


def _segment(agent_id: str, rng: random.Random, seconds: float | None = None, rate: int = 16000) -> Segment:
    """0.1-0.5 s (or ``seconds``) of 16 kHz audio, labelled ``rate``."""
    segment = make_segment(agent_id, rng.randrange(10**6), seconds=seconds or rng.uniform(0.1, 0.5), rng=rng)
    if rate != 16000:
        segment = segment.model_copy(update={"audio": segment.audio.model_copy(update={"sample_rate": rate})})
    return segment


def truncated(agent_id: str, rng: random.Random) -> Bad:
    raw = encode(_segment(agent_id, rng))
    return raw[: rng.randrange(1, len(raw) - 1)], Reason.BAD_JSON, None


def oversize(agent_id: str, rng: random.Random) -> Bad:
    segment = _segment(agent_id, rng, seconds=rng.uniform(1.7, 2.5))  # 73-107 kB as JSON
    return encode(segment), Reason.TOO_LARGE, segment.segment_id


def wrong_sample_rate(agent_id: str, rng: random.Random) -> Bad:
    segment = _segment(agent_id, rng, rate=rng.choice([8000, 22050, 44100, 48000]))
    return encode(segment), Reason.BAD_AUDIO, segment.segment_id


def bad_json(agent_id: str, rng: random.Random) -> Bad:
    templates = [
        b"{'schema': 'edgecap.segment.v1'}",
        b'{"schema": "edgecap.segment.v1", "agent_id": "%s", ',
        b'{"schema": "edgecap.segment.v1",, "seq": 1}',
        b"[1, 2, 3",
        b"edgecap segment %s",
        b'{"schema": "edgecap.segment.v1" "agent_id": "%s"}',
    ]
    template = rng.choice(templates)
    return (template % agent_id.encode() if b"%s" in template else template), Reason.BAD_JSON, None


def spoofed(agent_id: str, rng: random.Random) -> Bad:
    segment = _segment(f"victim-{rng.randrange(5)}", rng)  # another device's id, sent on our topic
    return encode(segment), Reason.SPOOFED_AGENT, segment.segment_id


def random_bytes(_agent_id: str, rng: random.Random) -> Bad:
    return rng.randbytes(rng.randrange(1, 2048)), Reason.BAD_JSON, None


def wrong_schema(agent_id: str, rng: random.Random) -> Bad:
    if rng.random() < 0.5:
        return encode(Status(agent_id=agent_id, online=True, at=time.time())), Reason.UNKNOWN_SCHEMA, None
    obj = json.loads(encode(_segment(agent_id, rng)))
    obj["schema"] = rng.choice(["edgecap.segment.v9", "edgecap.segments.v1", ""])
    return json.dumps(obj).encode(), Reason.UNKNOWN_SCHEMA, None


def invalid_field(agent_id: str, rng: random.Random) -> Bad:
    segment = _segment(agent_id, rng)
    obj = json.loads(encode(segment))
    field, value = rng.choice([("seq", -1), ("seq", "first"), ("started_at", -5.0), ("draft", 7)])
    obj[field] = value
    return json.dumps(obj).encode(), Reason.INVALID, segment.segment_id


KINDS: list[Callable[[str, random.Random], Bad]] = [
    truncated, oversize, wrong_sample_rate, bad_json, spoofed, random_bytes, wrong_schema, invalid_field,
]


class Attacker:
    """One MQTT client publishing malformed messages on the topics of the ``ATTACKERS`` devices, and
    reading the receipts the bridge sends them."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.rejected: dict[str, str] = {}
        self.sent: list[tuple[str, Reason, str | None]] = []  # (topic, reason, segment id)
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(mqtt_topic(a, Down.RECEIPTS), 1) for a in ATTACKERS])
        assert subscribed.wait(10)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        receipt = decode(bytes(msg.payload), Receipt)
        with self.lock:
            self.rejected.update({r.segment_id: r.reason for r in receipt.rejected})

    def send(self, messages: list[tuple[str, Bad]], over_s: float) -> threading.Thread:
        """Publish ``messages`` spread evenly over ``over_s`` seconds, in a thread."""

        def run() -> None:
            started = time.monotonic()
            info = None
            for i, (agent_id, (payload, reason, segment_id)) in enumerate(messages):
                delay = started + over_s * i / len(messages) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                topic = mqtt_topic(agent_id, Up.SEGMENTS)
                info = self.client.publish(topic, payload, qos=1)
                assert info.rc == mqtt.MQTT_ERR_SUCCESS
                self.sent.append((topic, reason, segment_id))
            if info is not None:
                info.wait_for_publish(30)

        thread = threading.Thread(target=run, name="attacker", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_malformed_input_is_dead_lettered_without_slowing_valid_traffic(tmp_path: Path) -> None:
    rng = random.Random(11)
    mixed_rounds = ROUNDS + PACED_ROUNDS
    per_round = [MALFORMED // mixed_rounds + (i < MALFORMED % mixed_rounds) for i in range(mixed_rounds)]
    metrics_port = free_port()
    with Mosquitto(workdir=tmp_path / "mosquitto") as mosquitto, Tansu() as kafka:
        bridge = bridge_service(mosquitto, kafka.bootstrap, tmp_path, metrics_port=metrics_port,
                                max_message_bytes=MAX_BYTES, deadletter_payload_bytes=2048)
        bridge.start()
        fleet = attacker = None
        try:
            wait_until(lambda: scrape(metrics_port).get("edgecap_bridge_mqtt_connected") == 1, 30, "the bridge")
            fleet = Fleet(AGENTS, mosquitto.port, tmp_path, "valid")
            attacker = Attacker(mosquitto.port)

            def run_round(bad: list[tuple[str, Bad]], over_s: float, rate: float | None = None) -> float:
                """Valid segments per second from the first commit to the last receipt."""
                assert fleet is not None and attacker is not None
                started = time.monotonic()
                fleet.feed(VALID_PER_ROUND, rate)
                sender = attacker.send(bad, over_s) if bad else None
                fleet.join_feed(120)
                fed = time.monotonic()
                wait_until(lambda: not fleet.depth() or not bridge.alive(), started + 120 - fed,
                           "receipts of the valid segments", every_s=0.05, detail=bridge.log_tail)
                assert bridge.alive(), f"the bridge died\n{bridge.log_tail()}"
                took = time.monotonic() - started
                tails.append(time.monotonic() - fed)
                if sender is not None:
                    sender.join(120)
                    assert not sender.is_alive()
                return VALID_PER_ROUND / took

            def malformed(n: int) -> list[tuple[str, Bad]]:
                agents = [rng.choice(ATTACKERS) for _ in range(n)]  # the topic and (except spoofed) the envelope
                return [(agent, rng.choice(KINDS)(agent, rng)) for agent in agents]

            clean: list[float] = []
            mixed: list[float] = []
            tails: list[float] = []
            run_round([], 0)  # warm-up: connections, topics, first receipts
            for n in per_round[:ROUNDS]:
                clean.append(run_round([], 0))
                mixed.append(run_round(malformed(n), over_s=VALID_PER_ROUND / statistics.median(clean)))
            offered = PACED_LOAD * statistics.median(clean)
            paced_clean: list[float] = []
            paced_mixed: list[float] = []
            paced_tails: dict[str, list[float]] = {"clean": [], "mixed": []}
            for n in per_round[ROUNDS:]:
                paced_clean.append(run_round([], 0, offered))
                paced_tails["clean"].append(tails[-1])
                paced_mixed.append(run_round(malformed(n), VALID_PER_ROUND / offered, offered))
                paced_tails["mixed"].append(tails[-1])
            assert bridge.alive()

            expected = Counter(reason.value for _, reason, _ in attacker.sent)
            assert sum(expected.values()) == MALFORMED

            def mine(records: list[Record]) -> list[DeadLetter]:
                letters = [decode(v, DeadLetter) for _, v in records]
                return [d for d in letters if d.agent_id in ATTACKERS]

            letters = mine(read_topic(kafka.bootstrap, KafkaTopic.DEADLETTER,
                                      lambda r: len(mine(r)) >= MALFORMED, timeout_s=120, linger_s=1.0))
            got = Counter(d.reason for d in letters)
            assert got == expected, f"dead letters by reason {dict(got)} != sent {dict(expected)}"
            assert all(d.detail for d in letters)

            m = scrape(metrics_port)
            by_metrics = {r: m.get(f'edgecap_bridge_dead_lettered_total{{reason="{r}"}}', 0) for r in expected}
            assert by_metrics == dict(expected)
            assert m.get("edgecap_bridge_errors_total", 0) == 0

            named = {sid: reason.value for _, reason, sid in attacker.sent if sid is not None}
            wait_until(lambda: named.items() <= attacker.rejected.items(), 30, "rejections in receipts")

            committed = {sid for entries in fleet.committed().values() for _, sid in entries}
            assert len(committed) == (ROUNDS * 2 + PACED_ROUNDS * 2 + 1) * VALID_PER_ROUND
            seen: set[str] = set()

            def all_valid(records: list[Record]) -> bool:
                seen.update(decode(v, Segment).segment_id for k, v in records if k and k.startswith(b"valid-"))
                return committed <= seen

            read_topic(kafka.bootstrap, KafkaTopic.SEGMENTS, all_valid, timeout_s=120, linger_s=1.0)
            assert committed <= seen, f"{len(committed - seen)} valid segments missing in Kafka"
        finally:
            if attacker is not None:
                attacker.close()
            if fleet is not None:
                fleet.close()
            alive_at_end = bridge.alive()
            bridge.stop()

    ratio = statistics.median(mixed) / statistics.median(clean)
    paced = statistics.median(paced_mixed) / statistics.median(paced_clean)
    tail = {kind: round(statistics.median(t) * 1000) for kind, t in paced_tails.items()}
    print(
        f"bad input: {MALFORMED} malformed {dict(sorted(expected.items()))}, all dead-lettered with their "
        f"reason, 0 crashes; paced at {offered:.0f} valid/s: clean {statistics.median(paced_clean):.0f}/s, "
        f"mixed {statistics.median(paced_mixed):.0f}/s, ratio {paced:.3f}, last receipt after the last commit "
        f"{tail['clean']} ms clean / {tail['mixed']} ms mixed; saturated: clean {statistics.median(clean):.0f}/s "
        f"(rounds {[round(x) for x in clean]}), mixed {statistics.median(mixed):.0f}/s "
        f"(rounds {[round(x) for x in mixed]}): ratio {ratio:.3f}"
    )
    assert alive_at_end
    assert paced >= 0.95, f"at {offered:.0f}/s offered, valid throughput fell to {paced:.0%} of a clean run's"
    # saturated, the malformed traffic's own CPU (attacker, mosquitto, bridge) competes on shared cores
    assert ratio >= 0.6, f"saturated valid throughput fell to {ratio:.0%} of a clean run's"
