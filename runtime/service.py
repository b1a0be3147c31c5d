"""What every service's command line shares: ``--config``/``--check-config``/``--debug``, settings, signals."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from runtime.logs import configure
from runtime.settings import ConfigError, ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
_SECRET_KEY = re.compile(r"password|secret|token|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (environment variables override it)")
    parser.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="a folder of secret files named like the settings' environment variables (a mounted Kubernetes Secret)",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the settings, show them, exit")
    parser.add_argument("--debug", action="store_true", help="log at debug level")


def load_settings(cls: type[S], args: argparse.Namespace) -> S | None:
    """The settings, or None after writing the reason to stderr."""
    try:
        return cls.load(args.config, secrets_dir=args.secrets_dir)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return None


def prepare(cls: type[S], args: argparse.Namespace, service: str, adjust: Callable[[S], S] | None = None) -> S | int:
    """Load a service's settings (``adjust`` may amend them) and configure its logging from them:
    the settings to run with, or the exit code when the command is done already: 2 after bad
    settings (the reason on stderr), 0 after ``--check-config`` showed them."""
    configure(args.debug, service)
    settings = load_settings(cls, args)
    if settings is None:
        return 2
    configure(args.debug, service, json_lines=settings.log_format == "json")
    if adjust is not None:
        settings = adjust(settings)
    if args.check_config:
        show_settings(settings)
        return 0
    return settings


def redacted(settings: ServiceSettings) -> dict[str, Any]:
    """The settings as JSON data, without passwords (SecretStr, URL passwords, secret-looking keys)."""

    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and _SECRET_KEY.search(key):
            return "**********"
        if isinstance(value, str) and "://" in value:
            return _URL_PASSWORD.sub(r"\1***@", value)
        return value

    return scrub(settings.model_dump(mode="json"))


def show_settings(settings: ServiceSettings) -> None:
    sys.stdout.write(json.dumps(redacted(settings), indent=2, sort_keys=True) + "\n")


def stop_on_signals() -> threading.Event:
    """One event that SIGTERM and SIGINT set; every loop of the process watches it."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


EXIT_BROKEN = 70
"""EX_SOFTWARE: a thread of the service died; the service exits with this so that its supervisor
(systemd, Kubernetes) restarts it, instead of running on half alive."""


class Watchdog:
    """The threads of one service that must never die quietly.

    A thread started through :meth:`spawn` whose target raises is logged with its traceback and
    recorded: ``failure`` names it and ``died`` is set, for the service's main loop to exit with
    :data:`EXIT_BROKEN`. A target that returns (its input ended) is a normal end.
    """

    def __init__(self) -> None:
        self.died = threading.Event()
        self.failure: str | None = None

    def spawn(self, name: str, target: Callable[[], object]) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(name, target), name=name, daemon=True)
        thread.start()
        return thread

    def _run(self, name: str, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - recorded, logged, and the process exits
            log.critical("thread %s died: the service stops so that its supervisor restarts it", name, exc_info=True)
            if self.failure is None:
                self.failure = f"thread {name} died: {exc!r}"
            self.died.set()
