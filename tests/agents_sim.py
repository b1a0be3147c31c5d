"""Simulated agents and real service processes for the bridge's crash and bad-input proofs.

A :class:`SimAgent` is the real delivery path of a device without capture or ASR: its own
:class:`~edge_agent.outbox.Outbox` file and :class:`~edge_agent.link.MqttLink`, so a segment counts
as *committed* once :meth:`Outbox.append` returned, and it leaves the outbox only on the bridge's
receipt. A :class:`Fleet` feeds several of them at a steady rate from one thread each.
:class:`Service` runs ``python -m bridge`` (or a cloud worker) as a child process configured by
environment variables, as the demo does, and kills it with SIGKILL by its pid.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from contracts import Audio, Segment, Transcript, Up, encode, mqtt_topic, new_segment_id
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from runtime.settings import MqttSettings

REPO = Path(__file__).resolve().parent.parent


def sim_segment(agent_id: str, segment_id: str, seq: int, rng: random.Random, seconds: float | None = None) -> Segment:
    """A segment of 0.1-0.5 s of 16 kHz PCM (or ``seconds``) with an edge draft."""
    seconds = rng.uniform(0.1, 0.5) if seconds is None else seconds
    now = time.time()
    return Segment(
        agent_id=agent_id,
        segment_id=segment_id,
        seq=seq,
        started_at=now - seconds,
        ended_at=now,
        audio=Audio(sample_rate=16000, data=rng.randbytes(int(seconds * 16000) * 2)),
        draft=Transcript(text=f"{agent_id} utterance {seq}", model_id="sim", produced_at=now),
    )


class SimAgent:
    """One device's outbox and MQTT link; :meth:`commit` captures one segment."""

    def __init__(
        self,
        agent_id: str,
        mqtt_port: int,
        workdir: Path,
        *,
        resend_after_s: float = 2.0,
        resend_max_s: float = 4.0,
        max_in_flight: int = 50,
        seed: int = 0,
    ) -> None:
        self.agent_id = agent_id
        self.topic = mqtt_topic(agent_id, Up.SEGMENTS)
        self.rng = random.Random(f"{agent_id}-{seed}")
        self.outbox = Outbox(workdir / f"{agent_id}.sqlite3")
        self.link = MqttLink(
            agent_id,
            MqttSettings(port=mqtt_port, session_expiry_s=600, keepalive_s=5),
            self.outbox,
            on_final=lambda _final: None,
            resend_after_s=resend_after_s,
            resend_max_s=resend_max_s,
            max_in_flight=max_in_flight,
        )
        self.committed: list[tuple[int, str]] = []  # (seq, segment_id), in commit order
        self.link.start()

    def commit(self) -> str:
        segment_id = new_segment_id()

        def build(seq: int) -> bytes:
            return encode(sim_segment(self.agent_id, segment_id, seq, self.rng))

        seq = self.outbox.append(segment_id, self.topic, build)
        self.committed.append((seq, segment_id))  # append returned: the segment is committed
        self.link.notify()
        return segment_id

    def close(self) -> None:
        self.link.stop()
        self.outbox.close()


class Fleet:
    """``n`` simulated agents fed at a steady total rate, one feeding thread per agent."""

    def __init__(self, n: int, mqtt_port: int, workdir: Path, prefix: str, **link: float) -> None:
        self.agents = [SimAgent(f"{prefix}-{i}", mqtt_port, workdir, seed=i, **link) for i in range(n)]  # type: ignore[arg-type]
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def feed(self, total: int, rate_per_s: float | None) -> None:
        """Start committing ``total`` segments spread over the agents (``None`` rate: as fast as possible)."""
        per_agent = [total // len(self.agents) + (i < total % len(self.agents)) for i in range(len(self.agents))]
        started = time.monotonic()
        interval = len(self.agents) / rate_per_s if rate_per_s else 0.0

        def run(agent: SimAgent, count: int) -> None:
            try:
                for i in range(count):
                    delay = started + i * interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    agent.commit()
            except BaseException as exc:  # surfaced by the test through .errors
                self.errors.append(exc)

        self._threads = [
            threading.Thread(target=run, args=(a, c), name=f"feed-{a.agent_id}", daemon=True)
            for a, c in zip(self.agents, per_agent, strict=True)
        ]
        for t in self._threads:
            t.start()

    def feeding(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join_feed(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not self.feeding(), "feeding did not finish in time"
        assert not self.errors, f"committing failed: {self.errors[0]!r}"

    def committed(self) -> dict[str, list[tuple[int, str]]]:
        return {a.agent_id: list(a.committed) for a in self.agents}

    def total_committed(self) -> int:
        return sum(len(a.committed) for a in self.agents)

    def depth(self) -> int:
        return sum(a.outbox.depth() for a in self.agents)

    def close(self) -> None:
        for a in self.agents:
            a.close()


# --- child processes ---------------------------------------------------------------------------


class Service:
    """``python -m <module>`` as a child process with its own environment; restartable."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")} | env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.argv], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by pid, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def rss_mb(self) -> float | None:
        """Resident memory of the child now (from /proc)."""
        if not self.alive():
            return None
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return f"--- {self.name} log\n{self.log_path.read_text(errors='replace')[-chars:]}"
        except OSError:
            return ""


def bridge_service(mqtt_port: int, bootstrap: str, name: str, metrics_port: int, workdir: Path,
                   **settings: str) -> Service:
    """``python -m bridge`` configured through ``EDGECAP_BRIDGE_*`` (extra ``settings`` by field name)."""
    env = {
        "EDGECAP_BRIDGE_MQTT__PORT": str(mqtt_port),
        "EDGECAP_BRIDGE_MQTT__SESSION_EXPIRY_S": "600",
        "EDGECAP_BRIDGE_MQTT__KEEPALIVE_S": "5",
        "EDGECAP_BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "EDGECAP_BRIDGE_CLIENT_ID": name,
        "EDGECAP_BRIDGE_SHARED_GROUP": name,
        "EDGECAP_BRIDGE_DOWNLINK": "false",
        "EDGECAP_BRIDGE_METRICS_PORT": str(metrics_port),
        "EDGECAP_BRIDGE_METRICS_HOST": "127.0.0.1",
    } | {f"EDGECAP_BRIDGE_{k.upper()}": v for k, v in settings.items()}
    return Service("bridge", ["-m", "bridge"], env, workdir / "bridge.log")


def reconcile_service(bootstrap: str, store_url: str, group: str, metrics_port: int, workdir: Path) -> Service:
    """The real reconciler (``python -m cloud reconcile``) storing drafts from ``edgecap.drafts``."""
    env = {
        "EDGECAP_WORKER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "EDGECAP_WORKER_STORE_URL": store_url,
        "EDGECAP_WORKER_GROUP": group,
        "EDGECAP_WORKER_SESSION_TIMEOUT_MS": "6000",
        "EDGECAP_WORKER_METRICS_PORT": str(metrics_port),
    }
    return Service("reconcile", ["-m", "cloud", "reconcile"], env, workdir / "reconcile.log")
