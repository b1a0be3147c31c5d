"""``edgecap agent`` / ``python -m edge_agent``: run the edge agent."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from runtime.logs import configure
from runtime.service import EXIT_BROKEN, add_common_options, prepare, stop_on_signals

log = logging.getLogger("edge_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecap agent", description="Caption speech on this device.")
    add_common_options(parser)
    parser.add_argument("--input", type=Path, help="caption this WAV/FLAC file instead of a microphone")
    parser.add_argument("--fast", action="store_true", help="read the file as fast as possible, not in real time")
    parser.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    parser.add_argument("--until-drained", action="store_true", help="exit once the input is captioned and delivered")
    parser.add_argument("--list-quarantined", action="store_true",
                        help="print the segments the bridge refused (kept in the outbox) as JSON lines and exit")
    parser.add_argument("--resend-quarantined", action="store_true",
                        help="send the segments the bridge refused again (after fixing the cause), then run as usual")
    args = parser.parse_args(argv)
    if args.list_devices:
        configure(args.debug, "agent")
        from edge_agent.capture import CaptureError
        from edge_agent.capture.microphone import list_devices

        try:
            devices = list_devices()
        except CaptureError as exc:
            log.error("%s", exc)
            return 2
        for d in devices:
            sys.stdout.write(f"{d.index:3d}  {d.name}  ({d.max_input_channels} ch, {d.default_rate} Hz)\n")
        return 0

    from edge_agent.settings import AgentSettings

    def command_line(settings: AgentSettings) -> AgentSettings:
        update: dict[str, object] = {"realtime": False} if args.fast else {}
        if args.input:
            update["file"] = args.input
        return settings.model_copy(update={"input": settings.input.model_copy(update=update)})

    settings = prepare(AgentSettings, args, "agent", command_line)
    if isinstance(settings, int):
        return settings

    if args.list_quarantined:
        return list_quarantined(settings.outbox.path)
    if args.resend_quarantined:
        resend_quarantined(settings.outbox.path)

    from edge_agent.agent import STARTUP_ERRORS, Agent

    agent = Agent(settings)
    agent.stop_event = stop_on_signals()
    try:
        agent.start()
    except STARTUP_ERRORS as exc:  # a device misconfigured: say what is wrong, no traceback
        log.error("cannot start: %s", exc)
        agent.stop()
        return 2
    try:
        while not agent.stop_event.wait(0.2):
            if agent.watchdog.died.is_set():
                log.error("exiting: %s", agent.watchdog.failure)
                return EXIT_BROKEN
            if args.until_drained and agent.drained():
                log.info("input captioned and delivered; exiting")
                break
    finally:
        agent.stop()
    return 0


def list_quarantined(path: Path) -> int:
    """One JSON object per quarantined segment on stdout (seq, id, reason, detail, times, size)."""
    if not path.exists():
        log.info("no outbox at %s: nothing quarantined", path)
        return 0
    from edge_agent.outbox import Outbox

    box = Outbox(path)
    try:
        for item in box.quarantined():
            sys.stdout.write(json.dumps(item.to_record()) + "\n")
    finally:
        box.close()
    return 0


def resend_quarantined(path: Path) -> int:
    """Release every quarantined segment of the outbox at ``path`` for sending (before the agent
    starts, so they go out in seq order with the rest); logged and counted in the outbox."""
    from edge_agent.outbox import Outbox

    box = Outbox(path)
    try:
        held = box.quarantined()
        released = box.resend_quarantined()
    finally:
        box.close()
    reasons = Counter(item.reason for item in held)
    log.info("resending %d quarantined segments (%s)", released,
             ", ".join(f"{n} {reason}" for reason, n in reasons.items()) or "none")
    return released


if __name__ == "__main__":
    raise SystemExit(main())
