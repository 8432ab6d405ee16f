"""One thread that owns the netlink socket; the event loop sends it work.

pyroute2's ``AsyncIPRoute`` fails under uvloop and the sync ``IPRoute`` cannot be created in
a thread that runs an event loop (library notes), so every netlink call runs here, in order,
on a sync ``IPRoute`` created by the worker thread itself. Works on any asyncio loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Netlink:
    def __init__(self) -> None:
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def _ipr(self):
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            from pyroute2 import IPRoute

            # ext_ack: errors carry the kernel's own explanation ("A VXLAN device with the
            # specified VNI already exists"), not just an errno.
            ipr = self._local.ipr = IPRoute(ext_ack=True)
        return ipr

    def _run(self, fn: Callable[..., T], args, kwargs) -> T:
        return fn(self._ipr(), *args, **kwargs)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(ipr, *args, **kwargs)`` on the netlink thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._run, fn, args, kwargs)
        )

    def close(self) -> None:
        def shutdown() -> None:
            ipr = getattr(self._local, "ipr", None)
            if ipr is not None:
                ipr.close()
                self._local.ipr = None

        self._executor.submit(shutdown).result(timeout=5)
        self._executor.shutdown(wait=True)
