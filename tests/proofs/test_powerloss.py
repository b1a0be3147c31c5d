"""Power-loss proof: 1000 ``kill -9`` of a process that enqueues through the real outbox.

The parent forks a child that opens the outbox and appends segment-sized messages (32-100 KB of
PCM in a real :class:`~contracts.Segment`) as fast as it can, writing ``seq segment_id`` to a pipe
right after each ``append`` returns. After a random 0-30 ms the parent SIGKILLs it (often while
the outbox is still opening or in the middle of a commit), reopens the outbox as a restarted agent
would, and checks: ``PRAGMA integrity_check`` is ok; every segment the child reported is present
with exactly its bytes; at most one row more than reported (committed, then killed before the
pipe write); sequence numbers strictly increase and are never reused across restarts. Then it
deletes what it checked, as receipts would, keeping the newest rows in the outbox.
``EDGECAP_TEST_KILLS`` sets the number of kills (default 1000, the issue's proof).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support import scale

from contracts import Audio, Segment, Up, decode, encode, mqtt_topic
from edge_agent.outbox import Outbox

pytestmark = pytest.mark.proof

KILLS = scale("KILLS", 1000)
AGENT = "powerloss"
TOPIC = mqtt_topic(AGENT, Up.SEGMENTS)


def pcm_of(segment_id: str) -> bytes:
    """The audio the child stores under ``segment_id`` (so the parent can check every byte)."""
    rng = random.Random(segment_id)
    return rng.randbytes(rng.randrange(16_000, 50_000) * 2)  # 32-100 KB: 1-3 s of 16 kHz PCM16


def enqueue_forever(path: Path, report_fd: int, run: int) -> None:
    box = Outbox(path)
    i = 0
    while True:
        sid = f"pl-{run}-{i}"
        pcm = pcm_of(sid)

        def build(seq: int, sid: str = sid, pcm: bytes = pcm) -> bytes:
            return encode(Segment(agent_id=AGENT, segment_id=sid, seq=seq, started_at=1.0, ended_at=2.0,
                                  audio=Audio(sample_rate=16000, data=pcm)))

        seq = box.append(sid, TOPIC, build, audio_bytes=len(pcm))
        os.write(report_fd, f"{seq} {sid}\n".encode())  # < PIPE_BUF: written whole or not at all
        i += 1


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_kill_9_while_enqueuing_never_loses_a_committed_segment(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    rng = random.Random(3)
    last_seq = -1
    reported_total = unreported_total = killed_before_first = 0
    started = time.monotonic()
    for run in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: enqueue until killed
            try:
                os.close(read_fd)
                enqueue_forever(path, write_fd, run)
            finally:
                os._exit(1)
        os.close(write_fd)
        time.sleep(rng.uniform(0, 0.030))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"run {run}: child exited early"
        lines = read_all(read_fd).decode().splitlines()
        os.close(read_fd)
        reported = {sid: int(seq) for seq, sid in (line.split() for line in lines)}

        box = Outbox(path)  # the restart: WAL recovery, schema, counters
        try:
            check = sqlite3.connect(path)
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"run {run}"
            check.close()
            rows = box.due(100_000)
            by_id = {e.segment_id: e for e in rows}
            for sid, seq in reported.items():
                assert sid in by_id, f"run {run}: committed segment {sid} (seq {seq}) lost"
                entry = by_id[sid]
                assert entry.seq == seq
                segment = decode(entry.payload, Segment)
                assert (segment.segment_id, segment.seq, segment.audio.data) == (sid, seq, pcm_of(sid))
            new = [e for e in rows if e.segment_id.startswith(f"pl-{run}-")]
            extra = [e.segment_id for e in new if e.segment_id not in reported]
            assert len(extra) <= 1, f"run {run}: rows nobody reported: {extra}"
            seqs = [e.seq for e in new]
            assert seqs == sorted(seqs) and (not seqs or seqs[0] > last_seq), f"run {run}: seq reused {seqs}"
            if seqs:
                last_seq = seqs[-1]
            assert box.next_seq() == last_seq + 1
            reported_total += len(reported)
            unreported_total += len(extra)
            killed_before_first += not new
            # receipts for all but the two newest rows
            box.remove([e.segment_id for e in rows[:-2]])
        finally:
            box.close()
    elapsed = time.monotonic() - started
    print(f"{KILLS} kills in {elapsed:.1f} s: {reported_total} appends reported, {unreported_total} committed "
          f"but unreported, {killed_before_first} kills before the first commit, last seq {last_seq}")
    assert reported_total > KILLS  # the children really got to enqueue
    assert killed_before_first > 0  # and some kills came before or during the first commit
