"""Offline proof with real processes: the MQTT broker goes away for minutes while a recording plays.

mosquitto, a Kafka-protocol broker, ``python -m bridge`` and the real agent (``python -m
edge_agent --input REC --until-drained``, configured through ``EDGECAP_AGENT_*`` like the demo)
run as separate processes. Once the first captions are shown, mosquitto is SIGKILLed and stays
down for ``EDGECAP_TEST_OFFLINE_S`` seconds (default 180) while the recording goes on playing in
real time; it then comes back on the same port. Captions must continue on the device during the
outage; afterwards every captured segment must reach Kafka ``edgecap.segments`` in per-agent
``seq`` order (duplicates counted and removed by ``segment_id`` first), and the outbox must drain.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from contracts import Kafka, Segment, decode
from devtools.brokers import Mosquitto, Tansu
from edge_agent.outbox import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "devtools" / "samples"
AGENT = "offline-agent"
OFFLINE_S = float(os.environ.get("EDGECAP_TEST_OFFLINE_S", "180"))
LEAD_S = 20.0  # recording before the outage
TAIL_S = 20.0  # recording after it


def make_recording(out: Path, min_utterances: int = 24) -> tuple[int, float]:
    """The bundled sample (6 utterances) repeated with silence between copies so the recording
    outlasts the outage; returns (utterances, seconds)."""
    import soundfile

    pcm, rate = soundfile.read(SAMPLES / "sample.wav", dtype="int16")
    per_copy = len(json.loads((SAMPLES / "sample.json").read_text())["utterances"])
    copies = max(math.ceil(min_utterances / per_copy), 1)
    wanted_s = LEAD_S + OFFLINE_S + TAIL_S
    pad_s = max(2.0, wanted_s / copies - len(pcm) / rate)
    pad = np.zeros(int(pad_s * rate), dtype=np.int16)
    audio = np.concatenate([np.concatenate([pcm, pad]) for _ in range(copies)])
    soundfile.write(str(out), audio, rate, subtype="PCM_16")
    return copies * per_copy, len(audio) / rate


def shown_captions(captions_dir: Path) -> dict[str, int]:
    """segment_id -> seq of the captions the agent has shown (its captions.jsonl)."""
    path = captions_dir / "captions.jsonl"
    shown: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                shown[record["segment_id"]] = int(record["seq"])
            except (ValueError, KeyError, TypeError):
                continue
    return shown


def read_segments(bootstrap: str, want: set[str], timeout_s: float = 60) -> list[Segment]:
    """Every record of ``edgecap.segments`` in log order, until all of ``want`` were seen."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"offline-reader-{time.time()}",
                         "enable.auto.commit": False})
    segments: list[Segment] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions: list[int] = []
        while not partitions and time.monotonic() < deadline:
            meta = consumer.list_topics(Kafka.SEGMENTS, timeout=5).topics.get(Kafka.SEGMENTS)
            partitions = list(meta.partitions) if meta is not None and not meta.error else []
        consumer.assign([TopicPartition(Kafka.SEGMENTS, p, OFFSET_BEGINNING) for p in partitions])
        while time.monotonic() < deadline and not want <= {s.segment_id for s in segments}:
            for m in consumer.consume(500, timeout=0.5):
                if not m.error() and m.key() == AGENT.encode():
                    segments.append(decode(m.value() or b"", Segment))
        for m in consumer.consume(500, timeout=1.0):  # late duplicates, if any
            if not m.error() and m.key() == AGENT.encode():
                segments.append(decode(m.value() or b"", Segment))
    finally:
        consumer.close()
    return segments


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | env)


def test_segments_captured_offline_all_reach_kafka_in_order(tmp_path: Path, models_dir: Path) -> None:
    utterances, duration_s = make_recording(tmp_path / "rec.wav")
    assert utterances >= 20 and duration_s >= OFFLINE_S + LEAD_S
    captions = tmp_path / "captions"
    outbox_path = tmp_path / "outbox.sqlite3"
    procs: list[subprocess.Popen[bytes]] = []
    with Mosquitto(workdir=tmp_path / "mosquitto") as mosquitto, Tansu() as kafka:
        try:
            procs.append(spawn(["-m", "bridge"], {
                "EDGECAP_BRIDGE_MQTT__PORT": str(mosquitto.port),
                "EDGECAP_BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
                "EDGECAP_BRIDGE_DOWNLINK": "false",
            }, tmp_path / "bridge.log"))
            agent = spawn(["-m", "edge_agent", "--input", str(tmp_path / "rec.wav"), "--until-drained"], {
                "EDGECAP_AGENT_AGENT_ID": AGENT,
                "EDGECAP_AGENT_MQTT__PORT": str(mosquitto.port),
                "EDGECAP_AGENT_ASR__MODEL_DIR": str(models_dir / "tiny.en" / "onnx-int8"),
                "EDGECAP_AGENT_OUTBOX__PATH": str(outbox_path),
                "EDGECAP_AGENT_OUTBOX__RESEND_AFTER_S": "5",
                "EDGECAP_AGENT_CAPTIONS__DIR": str(captions),
                "EDGECAP_AGENT_CAPTIONS__TERMINAL": "false",
                "EDGECAP_AGENT_HEARTBEAT_S": "2",
            }, tmp_path / "agent.log")
            procs.append(agent)

            def logs() -> str:
                return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                                 for p in sorted(tmp_path.glob("*.log")))

            deadline = time.monotonic() + 120
            while len(shown_captions(captions)) < 3:
                assert agent.poll() is None and time.monotonic() < deadline, f"no captions\n{logs()}"
                time.sleep(0.2)

            mosquitto.kill()  # the network is gone
            before = len(shown_captions(captions))
            time.sleep(OFFLINE_S)
            during = len(shown_captions(captions)) - before
            assert agent.poll() is None, f"the agent stopped during the outage\n{logs()}"
            mosquitto.start()  # back, same port, with its persisted sessions

            try:
                assert agent.wait(duration_s + 180) == 0, f"agent failed\n{logs()}"
            except subprocess.TimeoutExpired:
                pytest.fail(f"the outbox did not drain\n{logs()}")
            shown = shown_captions(captions)
            box = Outbox(outbox_path)
            depth = box.depth()
            box.close()
            received = read_segments(kafka.bootstrap, set(shown))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    assert during >= 0.5 * OFFLINE_S / (duration_s / utterances), f"only {during} captions during the outage"
    assert len(shown) >= utterances - 2, f"{len(shown)} captions for {utterances} utterances"
    assert depth == 0
    first: dict[str, Segment] = {}
    for segment in received:
        first.setdefault(segment.segment_id, segment)
    duplicates = len(received) - len(first)
    assert set(first) == set(shown), f"missing in Kafka: {sorted(set(shown) - set(first))}"
    seqs = [s.seq for s in first.values()]
    assert seqs == sorted(seqs), f"out of order in Kafka: {seqs}"
    assert seqs == sorted(shown.values()) == list(range(len(shown)))
    print(f"offline {OFFLINE_S:.0f} s: {len(shown)} segments, {during} captioned during the outage, "
          f"{duplicates} duplicates removed, recording {duration_s:.0f} s")
