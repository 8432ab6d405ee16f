"""Logging set-up: one line per event, readable in journald and on a terminal."""

from __future__ import annotations

import logging
import os
import sys

OWN = ("pyflannel", "__main__")  # our loggers (a worker runs as __main__)
LIBRARIES_ENV = "PYFLANNEL_DEBUG_LIBRARIES"  # e.g. "pyroute2,asyncio": their DEBUG too


def setup_logging(verbosity: int = 0, environ=os.environ) -> None:
    """``-v`` is pyflannel's verbosity. Libraries log at WARNING and above only (pyroute2 at
    DEBUG writes every netlink message: megabytes a second), unless named in
    PYFLANNEL_DEBUG_LIBRARIES. Enforced by levels *and* by a filter on the handler, since a
    library may reset its logger's level when it is imported."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        # journald adds the time and unit; the <N> prefix sets the entry's priority.
        fmt = "%(priority)s%(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    libraries = tuple(n.strip() for n in environ.get(LIBRARIES_ENV, "").split(",") if n.strip())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    handler.addFilter(_LibraryFilter(OWN + libraries))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in OWN:
        logging.getLogger(name).setLevel(level)
    for name in libraries:
        logging.getLogger(name).setLevel(logging.DEBUG)


class _LibraryFilter(logging.Filter):
    """Below WARNING, only records of the named logger trees pass."""

    def __init__(self, allowed: tuple[str, ...]):
        super().__init__()
        self.allowed = allowed

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or any(
            record.name == n or record.name.startswith(n + ".") for n in self.allowed
        )


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
        record.name = record.name.rpartition(".")[2]  # the module: "daemon", "lease_keeper"
        return super().format(record)
