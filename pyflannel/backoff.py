"""Exponential backoff with jitter, for everything that retries against etcd or the kernel."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    def __init__(
        self, first: float = 0.1, cap: float = 5.0, factor: float = 2.0, spread: float = 0.2
    ):
        self.first, self.cap, self.factor, self.spread = first, cap, factor, spread
        self._next = first

    def next(self) -> float:
        """The delay before the next try: grows by ``factor`` up to ``cap``, with a jitter of
        +-``spread`` (a share of the delay)."""
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        return delay * random.uniform(1 - self.spread, 1 + self.spread)

    def reset(self) -> None:
        self._next = self.first


class Outage:
    """Logs a run of failures once when it starts and once when it ends, never a flood."""

    def __init__(self, log, what: str, clock=None):
        self.log, self.what = log, what
        self.clock = clock or time.monotonic
        self.since: float | None = None
        self.failures = 0

    def failed(self, error: object, action: str = "retrying") -> None:
        self.failures += 1
        if self.since is None:
            self.since = self.clock()
            self.log.warning("%s: %s; %s", self.what, error, action)
        else:
            self.log.debug("%s: still failing (%d tries): %s", self.what, self.failures, error)

    def ok(self) -> float | None:
        """Record success; return how long the outage lasted, if there was one."""
        if self.since is None:
            return None
        lasted = self.clock() - self.since
        self.log.info(
            "%s: recovered after %.1f s (%d failed tries)", self.what, lasted, self.failures
        )
        self.since, self.failures = None, 0
        return lasted


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    backoff: Backoff,
    outage: Outage,
    action: Callable[[], str] = lambda: "retrying",
) -> T:
    """``await call()`` until it does not raise ``retry_on``, sleeping ``backoff`` between
    tries; the outage is logged once at its start (with ``action()``) and once at its end."""
    while True:
        try:
            result = await call()
        except retry_on as e:
            outage.failed(e, action())
            await asyncio.sleep(backoff.next())
            continue
        outage.ok()
        return result
