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
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from agents_sim import Service, bridge_service
from support import Record, keyed, read_topic, scale, service_env, wait_until

from contracts import Kafka, Segment, decode
from devtools import SAMPLES_DIR
from devtools.brokers import Mosquitto, Tansu
from edge_agent.outbox import Outbox
from edge_agent.settings import AgentSettings

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.proof]

AGENT = "offline-agent"
OFFLINE_S = scale("OFFLINE_S", 180.0)
LEAD_S = 20.0  # recording before the outage
TAIL_S = 20.0  # recording after it


def make_recording(out: Path, min_utterances: int = 24) -> tuple[int, float]:
    """The bundled sample (6 utterances) repeated with silence between copies so the recording
    outlasts the outage; returns (utterances, seconds)."""
    import soundfile

    pcm, rate = soundfile.read(SAMPLES_DIR / "sample.wav", dtype="int16")
    per_copy = len(json.loads((SAMPLES_DIR / "sample.json").read_text())["utterances"])
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


def test_segments_captured_offline_all_reach_kafka_in_order(tmp_path: Path, models_dir: Path) -> None:
    utterances, duration_s = make_recording(tmp_path / "rec.wav")
    assert utterances >= 20 and duration_s >= OFFLINE_S + LEAD_S
    captions = tmp_path / "captions"
    outbox_path = tmp_path / "outbox.sqlite3"
    with Mosquitto(workdir=tmp_path / "mosquitto") as mosquitto, Tansu() as kafka:
        settings = AgentSettings.load(
            agent_id=AGENT,
            mqtt={"port": mosquitto.port},
            asr={"model_dir": models_dir / "tiny.en" / "onnx-int8"},
            outbox={"path": outbox_path, "resend_after_s": 5},
            captions={"dir": captions, "terminal": False},
            heartbeat_s=2,
        )
        agent = Service("agent", ["-m", "edge_agent", "--input", str(tmp_path / "rec.wav"), "--until-drained"],
                        service_env(settings) | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                        tmp_path / "agent.log")
        services = [bridge_service(mosquitto, kafka.bootstrap, tmp_path), agent]

        def logs() -> str:
            return "\n".join(service.log_tail() for service in services)

        try:
            for service in services:
                service.start()
            wait_until(lambda: len(shown_captions(captions)) >= 3 or not agent.alive(), 120, "the first captions",
                       every_s=0.2, detail=logs)
            assert agent.alive(), f"the agent stopped before its first captions\n{logs()}"

            mosquitto.kill()  # the network is gone
            before = len(shown_captions(captions))
            time.sleep(OFFLINE_S)
            during = len(shown_captions(captions)) - before
            assert agent.alive(), f"the agent stopped during the outage\n{logs()}"
            mosquitto.start()  # back, same port, with its persisted sessions

            try:
                assert agent.wait(duration_s + 180) == 0, f"agent failed\n{logs()}"
            except subprocess.TimeoutExpired:
                pytest.fail(f"the outbox did not drain\n{logs()}")
            shown = shown_captions(captions)
            box = Outbox(outbox_path)
            depth = box.depth()
            box.close()

            def ids(records: list[Record]) -> set[str]:
                return {decode(v, Segment).segment_id for v in keyed(records, AGENT)}

            records = read_topic(kafka.bootstrap, Kafka.SEGMENTS, lambda r: set(shown) <= ids(r), timeout_s=60,
                                 linger_s=1.0)  # and late duplicates, if any
            received = [decode(v, Segment) for v in keyed(records, AGENT)]
        finally:
            for service in services:
                service.stop(15)

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
