"""Saying what a userspace data path dropped: the counts by direction and reason, at most once
per interval, only when some grew."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

DROP_REPORT_INTERVAL = 10.0  # seconds


async def report_drops(
    stats: Callable[[], Awaitable[dict | None]], every: float = DROP_REPORT_INTERVAL
) -> None:
    before: dict[str, int] = {}
    while True:
        await asyncio.sleep(every)
        try:
            counters = await stats()
        except Exception as e:  # a report never stops the daemon; the next one tries again
            log.warning("udp data path: its counters could not be read: %s", e)
            continue
        if counters is None:
            continue
        now = {
            f"{direction} {reason}": n
            for direction in ("to_peers", "from_peers")
            for reason, n in counters[direction]["drops"].items()
        }
        new = {k: n - before.get(k, 0) for k, n in now.items() if n > before.get(k, 0)}
        if new:
            log.warning(
                "udp data path dropped packets in the last %.0f s: %s",
                every,
                ", ".join(f"{k}={n}" for k, n in sorted(new.items())),
            )
        before = now
