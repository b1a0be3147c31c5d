"""A local PostgreSQL for tests and benchmarks: its own cluster in a temporary directory.

``initdb`` makes a cluster with trust authentication for one user, ``pg_ctl`` starts it on a free
loopback port with its socket in the same directory, and :meth:`Postgres.close` stops it and
removes the directory. The system's PostgreSQL service is never touched. Both programs refuse to
run as root; as root they run as the ``postgres`` system user (Debian's package creates it), which
then owns the directory.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Self

from devtools.brokers import BrokerError, LocalServer, wait_for_port

log = logging.getLogger(__name__)

USER = "edgecap"
"""The cluster's superuser, also the name of the database :attr:`Postgres.url` points to."""
RUN_AS = "postgres"
"""The system user that runs the cluster when we are root."""


def postgres_bin_dir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: ``$PATH`` if they are on it (other systems), else the
    newest ``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off ``$PATH``)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [p for p in found if (p / "pg_ctl").exists() and p.parent.name.isdigit()]
    if not found:
        raise BrokerError("PostgreSQL not found: install the Debian package 'postgresql' (make setup does)")
    return max(found, key=lambda p: int(p.parent.name))


class Postgres(LocalServer):
    """One PostgreSQL cluster on 127.0.0.1 and a free port; a context manager.

    ``url`` is the SQLAlchemy URL of its database (``postgresql+psycopg://edgecap@127.0.0.1:PORT/edgecap``).
    """

    name = "postgres"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.data = self.workdir / "data"
        self.bin = postgres_bin_dir()
        self._started = False

    @property
    def url(self) -> str:
        return self.database_url(USER)

    def database_url(self, database: str) -> str:
        """The SQLAlchemy URL of one database of this cluster."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database with a new name (one per test: stores that start empty) and
        return its URL."""
        import psycopg  # the cloud extra's driver; only what uses a database needs it
        from psycopg import sql

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname=USER, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def _run(self, *args: str, timeout_s: float = 60.0) -> None:
        """Run a PostgreSQL program (as the postgres user when we are root); BrokerError with its output if it fails."""
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise BrokerError(f"{args[0]} exited with {done.returncode}: {(done.stdout + done.stderr).strip()[-2000:]}")

    def start(self, timeout_s: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(RUN_AS)
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", USER, "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "postgres.log"), "-o", options, "-w",
                  "-t", str(int(timeout_s)), "start", timeout_s=timeout_s + 10)
        self._started = True
        wait_for_port(self.port, timeout_s)
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, USER)
        log.info("postgres listening on 127.0.0.1:%d (%s)", self.port, self.data)
        return self

    def stop(self) -> None:
        if self._started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except (BrokerError, subprocess.TimeoutExpired) as exc:
                log.warning("could not stop postgres in %s: %s", self.data, exc)
            self._started = False
