"""Logging set-up: one line per event, readable in journald and on a terminal."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbosity: int = 0) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        # journald adds the time and unit; the <N> prefix sets the entry's priority.
        fmt = "%(priority)s%(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pyroute2", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.priority = f"<{_PRIORITY.get(record.levelno, 6)}>"
        record.name = record.name.removeprefix("pyflannel.")
        return super().format(record)
