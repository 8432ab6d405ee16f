"""The reconcile loop: make the kernel match the desired state at start, every
--reconcile-interval seconds, as soon as the kernel watch reports damage, and, after a
failure, again with backoff. ``programmed`` is set after the first full pass succeeds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pyflannel.backend.dataplane import DataPlane
from pyflannel.backoff import Backoff
from pyflannel.errors import FlannelError

log = logging.getLogger(__name__)

REPAIR_SETTLE = 0.05  # seconds to wait after a kernel notification before reconciling


async def _nothing() -> None:
    pass


class ReconcileLoop:
    def __init__(
        self,
        plane: DataPlane,
        interval: float,
        before: Callable[[], Awaitable[None]] = _nothing,
    ):
        """``before``: what each pass starts with (following the underlay)."""
        self.plane = plane
        self.interval = interval
        self.before = before
        self.programmed = asyncio.Event()

    async def once(self) -> bool:
        """One full reconcile; True if the kernel now matches the desired state."""
        await self.before()
        try:
            report = await self.plane.reconcile()
        except FlannelError as e:
            log.error("could not reconcile the data plane: %s; retrying", e)
            return False
        if report.repaired:
            log.warning("kernel state repaired: %s", "; ".join(report.repaired[:20]))
        return not report.failed

    async def run(self) -> None:
        backoff = Backoff(first=1.0, cap=self.interval)
        repair_wanted = self.plane.repair_wanted
        while True:
            if not await self.once():
                await asyncio.sleep(backoff.next())
                continue
            self.programmed.set()
            backoff.reset()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the event is set, and this loop would never stop (a hung SIGTERM)
            try:
                async with asyncio.timeout(self.interval):
                    await repair_wanted.wait()
                await asyncio.sleep(REPAIR_SETTLE)  # let a burst of notifications arrive
            except TimeoutError:
                pass
            repair_wanted.clear()
