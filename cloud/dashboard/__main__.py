"""``edgecap dashboard`` (also ``python -m cloud.dashboard``): serve the dashboard with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from cloud.dashboard.app import create_app
from cloud.settings import DashboardSettings
from runtime.service import add_common_options, prepare

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecap dashboard", description="Serve the live captions dashboard.")
    add_common_options(parser)
    args = parser.parse_args(argv)
    settings = prepare(DashboardSettings, args, "dashboard")
    if isinstance(settings, int):
        return settings
    app = create_app(settings)
    log.info("dashboard on http://%s:%d", settings.host, settings.port)
    # uvicorn stops cleanly on SIGTERM/SIGINT itself (it installs its own handlers).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=args.debug,
        log_level="debug" if args.debug else "info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
