"""Refused is not deleted: a segment the bridge refuses stays on the device, quarantined.

The outbox keeps it (with the bridge's reason, detail and time) out of delivery, inside the quota,
counted and in the status; ``edgecap agent --resend-quarantined`` sends it again. The last test
proves it with real processes: mosquitto, a Kafka-protocol broker, the bridge and the agent.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agents_sim import Service, bridge_service
from support import REPO, StatusWatcher, read_keyed, service_env, wait_until

from contracts import Kafka, Segment, decode
from devtools import SAMPLES_DIR
from devtools.brokers import Mosquitto, Tansu
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.quota import FullPolicy, Quota
from edge_agent.settings import AgentSettings
from runtime.settings import MqttSettings


def fill(box: Outbox, n: int, prefix: str = "s", size: int = 10) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for sid in ids:
        box.append(sid, "t/segments", lambda seq: f"{seq:0{size}d}".encode())
    return ids


def test_a_refused_segment_stays_quarantined_and_is_never_due(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ids = fill(box, 4)
    box.mark_sent([0, 1, 2, 3], retry_in_s=0)
    assert box.quarantine([(ids[1], "bad_audio", "audio lasts 9 s"), ("gone", "invalid", "")]) == 1
    assert box.quarantine([(ids[1], "bad_audio", "again")]) == 0  # already held: kept as first refused
    assert [e.segment_id for e in box.due(10, resend_after_s=0)] == [ids[0], ids[2], ids[3]]
    box.mark_all_unsent()  # a reconnect resends what is unreceipted, never what was refused
    assert [e.segment_id for e in box.due(10)] == [ids[0], ids[2], ids[3]]
    assert box.depth() == 3 and box.quarantined_count() == 1
    assert box.stored_bytes() == 4 * 10  # inside the quota
    box.close()

    box = Outbox(tmp_path / "o.db")  # durable
    [held] = box.quarantined()
    assert (held.segment_id, held.seq, held.reason, held.detail, held.attempts) == (ids[1], 1, "bad_audio",
                                                                                    "audio lasts 9 s", 1)
    assert held.quarantined_at >= held.created_at
    assert box.quarantine_counters() == {"quarantined_total": 1, "resent_quarantined": 0, "dropped_quarantined": 0}
    assert box.resend_quarantined() == 1
    assert box.quarantined() == [] and box.depth() == 4
    [again] = [e for e in box.due(10) if e.segment_id == ids[1]]
    assert again.attempts == 0  # due at once, the backoff starts over
    assert box.quarantine_counters()["resent_quarantined"] == 1
    assert box.remove(ids) == 4 and box.depth() == 0


def test_an_outbox_of_the_layout_before_quarantine_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    db.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, segment_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,"
        " created_at REAL NOT NULL, sent_at REAL, next_at REAL, attempts INTEGER NOT NULL DEFAULT 0,"
        " size INTEGER NOT NULL DEFAULT 0, audio_bytes INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL);"
        "CREATE INDEX outbox_next_at ON outbox(next_at);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO outbox VALUES (3, 'old3', 't', 1.0, 2.0, 9e99, 2, 3, 1, x'010203');"
        "INSERT INTO counters VALUES ('next_seq', 4), ('dropped_audio_segments', 5);"
    )
    db.close()
    box = Outbox(tmp_path / "o.db")
    columns = [row[1] for row in box._db.execute("PRAGMA table_info(outbox)")]
    assert columns[-1] == "payload" and "quarantined_at" in columns  # the payload stays the last column
    [entry] = box.due(10)  # its send timer is reset: due at once
    assert (entry.seq, entry.segment_id, entry.payload, entry.attempts) == (3, "old3", b"\x01\x02\x03", 2)
    assert box.stored_bytes() == 3 and box.next_seq() == 4 and box.counters()["dropped_audio_segments"] == 5
    assert box.quarantine([("old3", "invalid", "clock ahead")]) == 1 and box.depth() == 0
    assert box._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_drop_oldest_audio_deletes_the_oldest_quarantined_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", Quota(max_bytes=5 * 100, policy=FullPolicy.DROP_OLDEST_AUDIO))
    ids = fill(box, 5, size=100)
    box.quarantine([(ids[1], "bad_audio", ""), (ids[3], "invalid", "")])
    fill(box, 1, prefix="new", size=100)  # needs the room of one: the oldest quarantined goes, whole
    assert [q.segment_id for q in box.quarantined()] == [ids[3]]
    assert [e.segment_id for e in box.due(10)] == [ids[0], ids[2], ids[4], "new0"]  # pending ones untouched
    assert box.quarantine_counters()["dropped_quarantined"] == 1
    assert box.counters()["dropped_audio_segments"] == 0
    status = MqttLink("q-agent", MqttSettings(port=1), box, on_final=lambda f: None).status()  # no broker needed
    assert (status.quarantined, status.quarantined_total, status.dropped_segments) == (1, 2, 1)
    assert status.queue_depth == 4


def test_refuse_new_audio_keeps_quarantined_segments(tmp_path: Path) -> None:
    from edge_agent.quota import OutboxFull

    box = Outbox(tmp_path / "o.db", Quota(max_bytes=3 * 100, policy=FullPolicy.REFUSE_NEW_AUDIO))
    ids = fill(box, 3, size=100)
    box.quarantine([(ids[0], "bad_audio", "")])
    with pytest.raises(OutboxFull):
        fill(box, 1, prefix="new", size=100)
    assert [q.segment_id for q in box.quarantined()] == [ids[0]] and box.counters()["refused_segments"] == 1


# --- with real processes --------------------------------------------------------------------------

AGENT = "quarantine-agent"


def agent_command(env: dict[str, str], *flags: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m edge_agent FLAGS`` to the end, configured by ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")} | env
    return subprocess.run([sys.executable, "-m", "edge_agent", *flags], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.mark.models
def test_refused_segments_stay_on_the_device_and_are_resent_after_the_fix(
    tmp_path: Path, mosquitto: Mosquitto, kafka: Tansu, models_dir: Path
) -> None:
    import soundfile

    silence = tmp_path / "silence.wav"
    soundfile.write(str(silence), np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    outbox = tmp_path / "outbox.sqlite3"
    settings = AgentSettings.load(
        agent_id=AGENT,
        mqtt={"port": mosquitto.port},
        asr={"model_dir": models_dir / "tiny.en" / "onnx-int8"},
        outbox={"path": outbox, "resend_after_s": 2},
        captions={"dir": tmp_path / "captions", "terminal": False},
        heartbeat_s=1,
    )
    env = service_env(settings) | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    watcher = StatusWatcher(mosquitto.port, AGENT)
    strict = bridge_service(mosquitto, kafka.bootstrap, tmp_path, max_audio_s=0.2)  # refuses every utterance
    relaxed: Service | None = None
    try:
        strict.start()
        run = agent_command(env, "--input", str(SAMPLES_DIR / "sample.wav"), "--fast", "--until-drained")
        assert run.returncode == 0, run.stderr[-4000:] + strict.log_tail()
        captioned = [json.loads(line)["segment_id"]
                     for line in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()]
        assert len(captioned) >= 3

        box = Outbox(outbox)
        held = box.quarantined()
        assert box.depth() == 0  # --until-drained ended: nothing waits for delivery ...
        box.close()
        assert sorted(q.segment_id for q in held) == sorted(captioned)  # ... and nothing refused was deleted
        assert {q.reason for q in held} == {"bad_audio"} and all("0.2 s" in q.detail for q in held)
        assert "kept in quarantine" in run.stderr
        wait_until(lambda: any(s.quarantined == len(held) for s in watcher.online()), 10,
                   "a status that counts the quarantined segments")
        last = [s for s in watcher.online() if s.quarantined == len(held)][-1]
        assert last.quarantined_total == len(held) and last.queue_depth == 0

        listed = agent_command(env, "--list-quarantined", timeout_s=60)
        assert listed.returncode == 0, listed.stderr
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["segment_id"] for r in records] == [q.segment_id for q in held]
        assert all(r["reason"] == "bad_audio" and r["quarantined_at"] > 0 for r in records)

        strict.stop()  # the operator fixes the cause: a bridge that takes these segments
        relaxed = bridge_service(mosquitto, kafka.bootstrap, tmp_path)
        relaxed.start()
        resend = agent_command(env, "--resend-quarantined", "--input", str(silence), "--fast", "--until-drained")
        assert resend.returncode == 0, resend.stderr[-4000:] + relaxed.log_tail()
        assert f"resending {len(held)} quarantined segments ({len(held)} bad_audio)" in resend.stderr
        box = Outbox(outbox)
        assert box.depth() == 0 and box.quarantined() == []
        assert box.quarantine_counters() == {"quarantined_total": len(held), "resent_quarantined": len(held),
                                             "dropped_quarantined": 0}
        box.close()
        records_in_kafka = read_keyed(kafka.bootstrap, Kafka.SEGMENTS, AGENT, want=len(held), timeout_s=30)
        assert {decode(v, Segment).segment_id for v in records_in_kafka} == {q.segment_id for q in held}
    finally:
        strict.stop()
        if relaxed is not None:
            relaxed.stop()
        watcher.close()
