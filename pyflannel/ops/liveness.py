"""Is the daemon alive, and telling systemd so (sd_notify's WATCHDOG=1): alive means the event
loop runs (we are here), the netlink worker answers, and a userspace data path has not died.
A hung daemon stops pinging, and systemd's WatchdogSec restarts it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pyflannel.kernel.netlink import Netlink
from pyflannel.ops import sd_notify

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, netlink: Netlink, datapath_problem: Callable[[], str | None]):
        self.netlink = netlink
        self.datapath_problem = datapath_problem

    async def problem(self) -> str:
        """Empty if the daemon is alive, else why not."""
        try:
            async with asyncio.timeout(5):
                await self.netlink.call(lambda ipr: None)
        except TimeoutError:
            return "the netlink worker does not answer"
        problem = self.datapath_problem()
        return f"the UDP data path died: {problem}" if problem else ""

    async def watchdog(self, interval: float, summary: Callable[[], str]) -> None:
        """WATCHDOG=1 every ``interval`` seconds while alive, with the status line when it
        changed."""
        last_status = ""
        while True:
            problem = await self.problem()
            if problem:
                log.error("not pinging the systemd watchdog: %s", problem)
            else:
                status = summary()
                sd_notify.notify(
                    "WATCHDOG=1" + (f"\nSTATUS={status}" if status != last_status else "")
                )
                last_status = status
            await asyncio.sleep(interval)
