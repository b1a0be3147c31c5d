"""Logging, configured in one place for every edgecap process."""

from __future__ import annotations

import logging
import sys


def configure(debug: bool = False, service: str = "edgecap") -> None:
    """Log to stderr, one line per record, with the service name; ``--debug`` turns it up."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("urllib3", "httpx", "httpcore", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
