"""``edgecap agent`` / ``python -m edge_agent``: run the edge agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from contracts.settings import ConfigError
from edgecap.logs import configure

log = logging.getLogger("edge_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecap agent", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (environment EDGECAP_AGENT_* overrides it)")
    parser.add_argument("--check-config", action="store_true", help="validate the settings, print them, exit")
    parser.add_argument("--input", type=Path, help="caption this WAV/FLAC file instead of a microphone")
    parser.add_argument("--fast", action="store_true", help="read the file as fast as possible, not in real time")
    parser.add_argument("--until-drained", action="store_true", help="exit once the input is captioned and delivered")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    args = parser.parse_args(argv)
    configure(args.debug, "agent")

    from edge_agent.settings import AgentSettings

    overrides: dict[str, object] = {}
    try:
        settings = AgentSettings.load(args.config)
        if args.input or args.fast:
            overrides["input"] = settings.input.model_copy(
                update={k: v for k, v in (("file", args.input), ("realtime", not args.fast)) if v is not None}
            )
            settings = settings.model_copy(update=overrides)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.check_config:
        sys.stdout.write(settings.model_dump_json(indent=2) + "\n")
        return 0

    from edge_agent.agent import Agent

    agent = Agent(settings)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop_event.set())
    agent.start()
    try:
        while not agent.stop_event.wait(0.2):
            if args.until_drained and agent.drained():
                log.info("input captioned and delivered; exiting")
                break
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
