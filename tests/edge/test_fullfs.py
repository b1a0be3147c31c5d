"""A really full filesystem: the agent captions on, counts what it cannot store, and uploads again
by itself once space returns, without a restart.

Both put the outbox on a small tmpfs the test mounts (as root; skipped with the reason where
mounting is not permitted). The first runs the outbox and the link in process (no models needed).
The second, the proof, runs mosquitto, a Kafka-protocol broker, ``python -m bridge`` and the real
agent (``python -m edge_agent``, a recording played in real time, its outbox and caption files on
the tmpfs) as processes. Once the first segment is in Kafka the test stops the bridge until a
segment waits in the outbox, fills the filesystem with a file of zeros until ENOSPC and starts
the bridge again: its receipts cannot be recorded, resends cannot be marked, new segments cannot
be stored. Captions must go on and failed appends be counted in the status; then the test deletes
the file, and the waiting segment and those captured afterwards must reach Kafka within seconds,
in ``seq`` order, from the same agent process.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from agents_sim import Service, bridge_service
from support import StatusWatcher, commit_segments, keyed, read_topic, service_env, wait_until

from contracts import Down, Kafka, Receipt, Segment, Up, decode, encode, mqtt_filter, mqtt_topic
from devtools import SAMPLES_DIR
from devtools.brokers import Mosquitto, Tansu
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox, OutboxUnavailable
from edge_agent.settings import AgentSettings
from runtime.settings import MqttSettings

AGENT = "fullfs-agent"
FS_KIB = 8192


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``FS_KIB`` KiB mounted for this test, unmounted after it."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_KIB}k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(path: Path) -> int:
    """Write zeros to ``path`` until the filesystem refuses (ENOSPC); the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def drafts_shown(log: Path) -> int:
    """Caption lines the agent printed (its plain terminal view goes to its log)."""
    try:
        return log.read_text(errors="replace").count("(draft)")
    except OSError:
        return 0


class ReceiptingPeer:
    """The bridge's side of MQTT in the test: receipts every segment while ``receipting`` is set."""

    def __init__(self, port: int) -> None:
        self.receipting = threading.Event()
        self.receipting.set()
        self.received: list[str] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(mqtt_filter(Up.SEGMENTS), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        segment = decode(bytes(msg.payload), Segment)
        self.received.append(segment.segment_id)
        if self.receipting.is_set():
            receipt = Receipt(agent_id=segment.agent_id, accepted=[segment.segment_id], issued_at=time.time())
            self.client.publish(mqtt_topic(segment.agent_id, Down.RECEIPTS), encode(receipt), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_outbox_and_the_link_survive_a_full_disk(small_fs: Path, mosquitto: Mosquitto) -> None:
    """In process, no models: an append on the full disk fails cleanly and is counted; the link's
    publish loop and receipt handling fail and go on; once space returns, everything is delivered."""
    peer = ReceiptingPeer(mosquitto.port)
    box = Outbox(small_fs / "o.db")
    link = MqttLink("fullfs-link", MqttSettings(port=mosquitto.port), box, on_final=lambda f: None,
                    resend_after_s=0.3, resend_max_s=0.6)
    filler = small_fs / "filler"
    link.start()
    try:
        commit_segments(box, "fullfs-link", 1, seconds=1.0)
        link.notify()
        wait_until(lambda: box.depth() == 0, 10, "the first segment receipted")
        peer.receipting.clear()
        [waiting] = commit_segments(box, "fullfs-link", 1, seconds=1.0)
        link.notify()
        wait_until(lambda: waiting in peer.received, 10, "the second segment sent")
        fill_up(filler)
        with pytest.raises(OutboxUnavailable, match="disk is full"):
            commit_segments(box, "fullfs-link", 1, seconds=1.0)
        assert box.append_failed == 1 and box.depth() == 1 and box.next_seq() == 2  # nothing half-written
        peer.receipting.set()  # receipts come, resends go, and the outbox can record neither
        wait_until(lambda: link.counters["outbox_errors"] >= 2, 20, "the link failing on the full disk")
        assert link._thread is not None and link._thread.is_alive()
        assert link.status().append_failed == 1

        filler.unlink()
        wait_until(lambda: box.depth() == 0, 20, "the waiting segment receipted once space returned")
        [later] = commit_segments(box, "fullfs-link", 1, seconds=1.0)
        link.notify()
        wait_until(lambda: box.depth() == 0 and later in peer.received, 10, "a new segment delivered")
        assert box._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        filler.unlink(missing_ok=True)
        link.stop()
        box.close()
        peer.close()


def test_a_full_disk_stops_no_thread_and_uploads_resume_when_space_returns(
    tmp_path: Path, small_fs: Path, mosquitto: Mosquitto, kafka: Tansu, models_dir: Path
) -> None:
    import soundfile

    pcm, rate = soundfile.read(SAMPLES_DIR / "sample.wav", dtype="int16")  # 6 utterances, ~25 s
    recording = tmp_path / "rec.wav"
    soundfile.write(str(recording), np.concatenate([pcm, np.zeros(rate, dtype=np.int16)] * 3), rate,
                    subtype="PCM_16")
    settings = AgentSettings.load(
        agent_id=AGENT,
        mqtt={"port": mosquitto.port},
        asr={"model_dir": models_dir / "tiny.en" / "onnx-int8"},
        outbox={"path": small_fs / "outbox.sqlite3", "resend_after_s": 1, "resend_max_s": 2,
                "min_free_disk_mb": 0},  # the disk itself refuses, not the quota
        captions={"dir": small_fs / "captions", "terminal": True},
        heartbeat_s=0.5,
    )
    agent_log = tmp_path / "agent.log"
    agent = Service("agent", ["-m", "edge_agent", "--input", str(recording)],
                    service_env(settings) | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}, agent_log)
    bridge = bridge_service(mosquitto, kafka.bootstrap, tmp_path)
    watcher = StatusWatcher(mosquitto.port, AGENT)

    def logs() -> str:
        return agent.log_tail(6000) + bridge.log_tail(2000)

    def segments() -> list[Segment]:
        return [decode(v, Segment) for v in keyed(read_topic(kafka.bootstrap, Kafka.SEGMENTS, lambda r: True,
                                                             timeout_s=5), AGENT)]

    filler = small_fs / "filler"
    try:
        bridge.start()
        agent.start()
        read_topic(kafka.bootstrap, Kafka.SEGMENTS, lambda r: len(keyed(r, AGENT)) >= 1, timeout_s=120)
        assert agent.alive(), logs()
        bridge.stop()  # no receipts for a while: the next segment waits in the outbox

        def waiting() -> bool:
            status = watcher.latest()
            return status is not None and status.queue_depth >= 1

        wait_until(waiting, 30, "a segment waiting in the outbox", every_s=0.2, detail=logs)
        filled = fill_up(filler)  # the disk is full
        assert filled > 0
        bridge.start()  # its receipts cannot be recorded now, nor the resends it prompts
        shown_before = drafts_shown(agent_log)

        def failing() -> bool:
            status = watcher.latest()
            return status is not None and status.append_failed >= 2

        wait_until(failing, 60, "two appends refused by the full disk, counted in the status", every_s=0.2,
                   detail=logs)
        assert agent.alive(), logs()
        assert drafts_shown(agent_log) >= shown_before + 2, "captions stopped while the disk was full"
        assert "outbox append failed" in agent_log.read_text(errors="replace")  # logged, never silent
        failed = watcher.latest().append_failed  # type: ignore[union-attr]

        filler.unlink()  # space returns
        freed_at = time.time()
        resumed = read_topic(kafka.bootstrap, Kafka.SEGMENTS,
                             lambda r: any(decode(v, Segment).started_at > freed_at for v in keyed(r, AGENT)),
                             timeout_s=30)
        assert any(decode(v, Segment).started_at > freed_at for v in keyed(resumed, AGENT)), \
            f"no segment captured after the disk had room again reached Kafka within 30 s\n{logs()}"

        def settled() -> bool:
            status = watcher.latest()
            return status is not None and status.at > freed_at and status.queue_depth == 0

        wait_until(settled, 30, "every stored segment delivered (queue depth 0)", every_s=0.2, detail=logs)
        assert agent.alive() and agent.starts == 1, logs()  # the same process all along
        last = watcher.latest()
        assert last is not None and last.append_failed >= failed  # the count stays (per process)
        delivered = segments()
        seqs = [s.seq for s in {s.segment_id: s for s in delivered}.values()]
        assert seqs == sorted(seqs) == list(range(len(seqs))), "a stored segment is missing or out of order"
    finally:
        filler.unlink(missing_ok=True)
        agent.stop(15)
        bridge.stop()
        watcher.close()
