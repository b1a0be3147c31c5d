"""Simulated agents and real service processes, for the proofs and the tests that kill a service.

A :class:`SimAgent` is the real delivery path of a device without capture or ASR: its own
:class:`~edge_agent.outbox.Outbox` file and :class:`~edge_agent.link.MqttLink`, so a segment counts
as *committed* once :meth:`Outbox.append` returned, and it leaves the outbox only on the bridge's
receipt. A :class:`Fleet` feeds several of them at a steady rate from one thread each.
:class:`Service` runs ``python -m bridge`` (or a cloud worker, or the agent) as a child process
configured by environment variables made from a settings object (:func:`support.service_env`), as
the demo does, and kills it with SIGKILL by its pid.
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
from typing import Any

from support import REPO, bridge_settings, make_segment, service_env

from cloud.settings import WorkerSettings
from contracts import Final, Up, encode, mqtt_topic, new_segment_id
from devtools.brokers import Mosquitto
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from runtime.settings import KafkaSettings, MqttSettings


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
            on_final=self._on_final,
            resend_after_s=resend_after_s,
            resend_max_s=resend_max_s,
            max_in_flight=max_in_flight,
        )
        self.committed: list[tuple[int, str]] = []  # (seq, segment_id), in commit order
        self.finals: dict[str, list[Final]] = {}  # segment_id -> the finals that came back, in order
        self._finals_lock = threading.Lock()
        self.link.start()

    def commit(self) -> str:
        segment_id = new_segment_id()
        seconds = self.rng.uniform(0.1, 0.5)

        def build(seq: int) -> bytes:
            return encode(make_segment(self.agent_id, seq, segment_id=segment_id, seconds=seconds, rng=self.rng))

        seq = self.outbox.append(segment_id, self.topic, build)
        self.committed.append((seq, segment_id))  # append returned: the segment is committed
        self.link.notify()
        return segment_id

    def _on_final(self, final: Final) -> None:
        with self._finals_lock:
            self.finals.setdefault(final.segment_id, []).append(final)

    def finals_back(self) -> int:
        """How many of its segments have had a final back."""
        with self._finals_lock:
            return len(self.finals)

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

    def wait(self, timeout_s: float) -> int:
        """The exit status once it exits by itself (``subprocess.TimeoutExpired`` if it does not)."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

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


def bridge_service(
    mosquitto: Mosquitto, bootstrap: str, workdir: Path, *flags: str, metrics_port: int = 0, **overrides: Any
) -> Service:
    """``python -m bridge`` (with ``flags``) with :func:`support.bridge_settings` and ``overrides``,
    its MQTT session kept 10 minutes across kills and a dead broker noticed within seconds."""
    mqtt = MqttSettings(port=mosquitto.port, session_expiry_s=600, keepalive_s=5)
    settings = bridge_settings(mosquitto, bootstrap, mqtt=mqtt, metrics_port=metrics_port, **overrides)
    return Service("bridge", ["-m", "bridge", *flags], service_env(settings), workdir / "bridge.log")


def reconcile_service(bootstrap: str, store_url: str, group: str, metrics_port: int, workdir: Path) -> Service:
    """The real reconciler (``python -m cloud reconcile``) storing the drafts of ``edgecap.segments``."""
    settings = WorkerSettings.load(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        store_url=store_url,
        group=group,
        session_timeout_ms=6000,
        metrics_port=metrics_port,
    )
    return Service("reconcile", ["-m", "cloud", "reconcile"], service_env(settings), workdir / "reconcile.log")
