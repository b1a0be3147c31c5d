"""Logging, configured in one place for every edgecap process."""

from __future__ import annotations

import json
import logging
import os
import sys

FORMAT_VARIABLE = "EDGECAP_LOG_FORMAT"  # "json": one JSON object per line (for log shippers)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, service, logger, message (and the traceback)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(debug: bool = False, service: str = "edgecap") -> None:
    """Log to stderr, one line per record, with the service name; ``--debug`` turns it up.

    With ``EDGECAP_LOG_FORMAT=json`` in the environment each line is a JSON object instead.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    if os.environ.get(FORMAT_VARIABLE, "").lower() == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter(service))
    for noisy in ("urllib3", "httpx", "httpcore", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
