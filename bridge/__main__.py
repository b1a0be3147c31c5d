"""``python -m bridge`` / ``edgecap bridge``: run the MQTT ⇄ Kafka bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from bridge.app import Bridge
from bridge.settings import BridgeSettings
from contracts.settings import ConfigError
from edgecap.logs import configure

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="edgecap bridge",
        description="Forward agent segments from MQTT into Kafka (with receipts) and finals back down.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (environment overrides it)")
    parser.add_argument("--check-config", action="store_true", help="validate and print the settings, then exit")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.debug, "bridge")
    try:
        settings = BridgeSettings.load(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"edgecap bridge: {exc}\n")
        return 2
    if args.check_config:
        sys.stdout.write(settings.model_dump_json(indent=2) + "\n")
        return 0
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with Bridge(settings):
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
