"""The ``edgecap`` command: one entry point, a subcommand per service.

``edgecap agent|bridge|worker|dashboard`` hand the rest of the command line to the service's own
``main`` (also reachable as ``python -m edge_agent``, ``python -m bridge``, ``python -m cloud``).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "agent": ("edge_agent.__main__", "run the edge agent on a device"),
    "bridge": ("bridge.__main__", "run the MQTT <-> Kafka bridge"),
    "worker": ("cloud.__main__", "run a cloud worker: transcribe | reconcile | detect"),
    "dashboard": ("cloud.dashboard.__main__", "serve the web dashboard"),
    "models": ("modelbuild.__main__", "prepare models offline: edgecap models prepare"),
    "demo": ("edgecap.demo", "run the whole pipeline locally on a sample recording"),
    "devices": ("edgecap.admin.devices_cli", "add, remove, list devices at the MQTT broker; its CA and config"),
    "config": ("edgecap.admin.config", "change settings of a running agent: edgecap config set AGENT_ID --muted true"),
}


def usage() -> str:
    lines = ["usage: edgecap <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "edgecap <command> --help shows a command's options."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        sys.stderr.write(f"edgecap: unknown command {args[0]!r}\n\n{usage()}")
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
