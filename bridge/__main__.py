"""``python -m bridge`` / ``edgecap bridge``: run the MQTT ⇄ Kafka bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging

from bridge.app import Bridge
from bridge.settings import BridgeSettings
from runtime.service import EXIT_BROKEN, add_common_options, prepare, stop_on_signals

log = logging.getLogger("bridge")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgecap bridge",
        description="Forward agent segments from MQTT into Kafka (with receipts) and finals back down.",
    )
    add_common_options(parser)
    settings = prepare(BridgeSettings, parser.parse_args(argv), "bridge")
    if isinstance(settings, int):
        return settings
    stop = stop_on_signals()
    with Bridge(settings) as bridge:
        while not stop.wait(0.5):
            if bridge.failed.is_set():
                log.error("exiting: %s", bridge.failure)
                return EXIT_BROKEN
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
