"""One thread that owns the netlink sockets; the event loop sends it work.

Every netlink call runs here, in order, on blocking sockets the worker thread creates (our
``kernel/iproute.py`` for devices and addresses, ``RouteSocket`` for the many route and
neighbour entries): the event loop never waits on the kernel, and it works on any asyncio
loop (pyroute2's own ``AsyncIPRoute`` fails under uvloop: library notes).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyflannel.kernel import codec as codec

T = TypeVar("T")


class Netlink:
    def __init__(self) -> None:
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def _ipr(self):
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            from pyflannel.kernel.iproute import IPRoute

            ipr = self._local.ipr = IPRoute()
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


class RouteSocket:
    """A raw NETLINK_ROUTE socket: many requests per system call, and fast dumps."""

    CHUNK = 256  # requests per datagram; their acks must fit the receive buffer

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._seq = 0

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def execute(self, requests: list[tuple[int, bytes]]) -> dict[int, int]:
        """Send (seq, message) requests; the errno of each (0 for success), by seq."""
        results: dict[int, int] = {}
        for start in range(0, len(requests), self.CHUNK):
            chunk = requests[start : start + self.CHUNK]
            self.sock.send(b"".join(message for _, message in chunk))
            waiting = {seq for seq, _ in chunk}
            while waiting:
                for kind, _, seq, payload in codec.messages(self.sock.recv(1 << 20)):
                    if kind == codec.NLMSG_ERROR and seq in waiting:
                        results[seq] = codec.error_code(payload)
                        waiting.discard(seq)
        return results

    def dump(self, kind: int, family: int):
        """The payloads of every message a dump request returns."""
        seq = self.next_seq()
        self.sock.send(codec.dump_request(kind, family, seq))
        while True:
            for msg_kind, _, msg_seq, payload in codec.messages(self.sock.recv(1 << 20)):
                if msg_seq != seq:
                    continue
                if msg_kind == codec.NLMSG_DONE:
                    return
                if msg_kind == codec.NLMSG_ERROR:
                    code = codec.error_code(payload)
                    raise OSError(code, f"netlink dump: {os.strerror(code)}")
                yield payload


_sockets = threading.local()


def route_socket() -> RouteSocket:
    """The calling thread's RouteSocket (all netlink work runs on the netlink thread)."""
    sock = getattr(_sockets, "sock", None)
    if sock is None:
        sock = _sockets.sock = RouteSocket()
    return sock
