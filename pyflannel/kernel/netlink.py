"""One thread that owns the netlink socket; the event loop sends it work.

Every netlink call runs here, in order, on one blocking socket the worker thread creates
(``route_socket()``: kernel/nlsocket.py's request loop), used for devices and addresses
through ``kernel/iproute.py`` and directly for the many route and neighbour entries: the
event loop never waits on the kernel, and it works on any asyncio loop (pyroute2's own
``AsyncIPRoute`` fails under uvloop: library notes).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyflannel.kernel.nlsocket import NetlinkSocket

T = TypeVar("T")


class Netlink:
    def __init__(self) -> None:
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def _ipr(self):
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            from pyflannel.kernel.iproute import IPRoute

            ipr = self._local.ipr = IPRoute(route_socket())  # one socket for all requests
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
            self._local.ipr = None
            sock = getattr(_sockets, "sock", None)
            if sock is not None:
                sock.close()
                _sockets.sock = None

        self._executor.submit(shutdown).result(timeout=5)
        self._executor.shutdown(wait=True)


_sockets = threading.local()


def route_socket() -> NetlinkSocket:
    """The calling thread's socket for the many route and neighbour entries (all netlink work
    runs on the netlink thread): a large buffer, many requests per system call."""
    sock = getattr(_sockets, "sock", None)
    if sock is None:
        sock = _sockets.sock = NetlinkSocket()
    return sock
