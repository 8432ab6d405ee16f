"""Keeping a network's rules in place: checked as soon as nf_tables announces a change to one of
their tables (iptables-nft and nftables mode alike; kernel/nft_watch.py), and every
--iptables-resync seconds anyway (iptables-legacy announces nothing).

A repair on notice is bounded. The check after our own restore finds nothing and does
nothing; another network's daemon restoring its rules in a shared chain is no drift of ours.
Someone who keeps removing our rules (a firewall manager reloading in a loop) gets
MAX_REPAIRS repairs on notice per WINDOW; then it is said once, and the rules are repaired at
the resync period only until a WINDOW passes without a repair (said once too)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from pyflannel.kernel.nft_watch import NftablesWatch, NftChange
from pyflannel.traffic.base import TrafficError
from pyflannel.traffic.families import NetworkRules

log = logging.getLogger(__name__)

DEBOUNCE = 0.01  # s: the rest of a transaction (a flush of several chains) arrives meanwhile
MAX_REPAIRS = 10  # repairs on notice per WINDOW before standing back (a fight: one a second)
WINDOW = 10.0  # s


class RepairBudget:
    """How many repairs on notice are left (pure: the clock is given)."""

    def __init__(self, most: int = MAX_REPAIRS, window: float = WINDOW):
        self.most, self.window = most, window
        self.repairs: deque[float] = deque()
        self.standing_back = False

    def allows(self, now: float) -> bool:
        """May a notice be acted on now? Standing back ends after a quiet WINDOW."""
        while self.repairs and self.repairs[0] <= now - self.window:
            self.repairs.popleft()
        if self.standing_back and not self.repairs:
            self.standing_back = False
        return not self.standing_back

    def quiet_at(self) -> float:
        """When standing back ends if nothing else is repaired (the last repair + WINDOW)."""
        return self.repairs[-1] + self.window if self.repairs else 0.0

    def repaired(self, now: float) -> bool:
        """Record a repair made on notice; True when that used up the budget (say so)."""
        self.repairs.append(now)
        if not self.standing_back and len(self.repairs) >= self.most:
            self.standing_back = True
            return True
        return False


class RuleRepair:
    def __init__(
        self,
        rules: NetworkRules,
        interval: float,
        open_watch: Callable[[], NftablesWatch] = NftablesWatch,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rules, self.interval = rules, interval
        self.open_watch, self.clock = open_watch, clock
        self.budget = RepairBudget()
        self.noticed = asyncio.Event()
        self.repairs_on_notice = 0

    async def run(self) -> None:
        watch = self._watch()
        try:
            while True:
                on_notice = await self._wait()
                if on_notice:
                    await asyncio.sleep(DEBOUNCE)
                self.noticed.clear()
                if not self._allowed() and on_notice:
                    continue  # standing back: the periodic check repairs
                if await self._check() and on_notice:
                    self.repairs_on_notice += 1
                    if self.budget.repaired(self.clock()):
                        log.warning(
                            "%s rules of this network were removed %d times in %g s by "
                            "something else (a firewall manager reloading?); repairing them "
                            "every %g s only, until it stops",
                            self.rules.mode,
                            self.budget.most,
                            self.budget.window,
                            self.interval,
                        )
        finally:
            if watch is not None:
                asyncio.get_running_loop().remove_reader(watch.fileno())
                watch.close()

    def _allowed(self) -> bool:
        was = self.budget.standing_back
        allowed = self.budget.allows(self.clock())
        if was and allowed:
            log.info(
                "%s rules: nothing removed them for %g s; checked now, and repaired as soon "
                "as they change again",
                self.rules.mode,
                self.budget.window,
            )
        return allowed

    def _watch(self) -> NftablesWatch | None:
        try:
            watch = self.open_watch()
        except OSError as e:
            log.info(
                "no nf_tables notifications (%s): %s rules are checked every %g s",
                e,
                self.rules.mode,
                self.interval,
            )
            return None

        def readable() -> None:
            try:
                changed: list[NftChange] | None = watch.get()
            except OSError:  # ENOBUFS: some were lost; look anyway
                changed = None
            tables = self.rules.tables()
            if changed is None or any((c.family, c.table) in tables for c in changed):
                self.noticed.set()

        asyncio.get_running_loop().add_reader(watch.fileno(), readable)
        return watch

    async def _wait(self) -> bool:
        """True when a change to our tables was announced; False at the resync period, or
        when standing back ends (then the rules are checked at once)."""
        timeout = self.interval
        if self.budget.standing_back:
            timeout = min(timeout, max(0.0, self.budget.quiet_at() - self.clock()) + DEBOUNCE)
        try:
            async with asyncio.timeout(timeout):
                await self.noticed.wait()
            return True
        except TimeoutError:
            return False

    async def _check(self) -> bool:
        """Check (and repair) every family's rules; True if something was repaired."""
        repaired = False
        for manager in self.rules.managers:
            try:
                repaired |= bool(await manager.check())
            except TrafficError as e:
                manager.last_problem = str(e)
                log.error("%s resync: %s", manager.mode, e)
        return repaired
