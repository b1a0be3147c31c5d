"""``python -m bridge`` / ``edgecap bridge``: run the MQTT ⇄ Kafka bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from bridge.app import Bridge
from bridge.settings import BridgeSettings
from edgecap.logs import configure
from edgecap.service import add_common_options, load_settings, show_settings, stop_on_signals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgecap bridge",
        description="Forward agent segments from MQTT into Kafka (with receipts) and finals back down.",
    )
    add_common_options(parser)
    args = parser.parse_args(argv)
    configure(args.debug, "bridge")
    settings = load_settings(BridgeSettings, args)
    if settings is None:
        return 2
    if args.check_config:
        show_settings(settings)
        return 0
    stop = stop_on_signals()
    with Bridge(settings):
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
