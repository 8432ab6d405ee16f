"""The UDP encapsulation path of a node: TUN device ``flannel0``, UDP sockets on the
interface address, and the worker processes forwarding between them.

Used by the UDP backend (every peer goes this way) and by the VXLAN backend for peers that
can only speak UDP (nodes that fell back). Kernel routes into ``flannel0`` are the owning
backend's business (plan.py); this class owns the device, the sockets and the workers.

With N workers the TUN has N queues and the sockets form one ``SO_REUSEPORT`` group: the kernel
spreads flows over the queues when sending, and a BPF program (steering.py) spreads received
datagrams by inner flow. Each worker owns one queue and one socket (worker.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflannel.backend import kernel
from pyflannel.backend.plan import Peer
from pyflannel.backend.udp.tun import TUN_NAME, TunError, open_queues
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink

if TYPE_CHECKING:  # the workers' modules load when the path starts (a VXLAN node's may never)
    from pyflannel.backend.udp.pool import WorkerPool

log = logging.getLogger(__name__)

DEFAULT_PORT = 8285
TXQUEUELEN = 1000
TXQUEUELEN_BATCHED = 4000  # read in batches, the default 500 overflows (library notes)


def default_workers() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class UdpTuning:
    """How the data path runs: see --udp-datapath, --udp-fastpath, --udp-workers,
    --udp-priority."""

    datapath: str = "auto"
    fastpath: bool = True
    priority: str = "auto"
    workers: int = 1
    verbosity: int = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> UdpTuning:
        """From the daemon's flags (--udp-datapath, --udp-fastpath, --udp-workers,
        --udp-priority, -v)."""
        return cls(
            datapath=settings.get("udp_datapath") or "auto",
            fastpath=bool(settings.get("udp_fastpath", True)),
            priority=settings.get("udp_priority") or "auto",
            workers=settings.get("udp_workers") or default_workers(),
            verbosity=settings.get("v") or 0,
        )


DEFAULT_TUNING = UdpTuning()


def _tun_index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _prepare_tun(ipr, name: str, txqueuelen: int) -> int:
    index = ipr.link_lookup(ifname=name)[0]
    ipr.set_link(index, txqlen=txqueuelen)
    return index


class UdpPath:
    def __init__(self, netlink: Netlink, ext: ExtIface, port: int, mtu: int, tuning: UdpTuning):
        self.netlink = netlink
        self.ext = ext
        self.port = port
        self.mtu = mtu
        self.tuning = tuning
        self.index: int | None = None
        self.pool: WorkerPool | None = None
        self.vnet_refused: str | None = None
        self._peers: list[Peer] = []
        self._subnet: IPv4Network | None = None
        self._network: IPv4Network | None = None

    @property
    def running(self) -> bool:
        return self.pool is not None

    async def start(self) -> None:
        """Attach to (or create) flannel0, bind the sockets, start the workers."""
        tuning = self.tuning
        try:
            tun_fds, self.vnet_refused = open_queues(tuning.workers, tuning.fastpath)
        except TunError as e:
            raise BackendError(f"UDP backend: {e}") from e
        fastpath = tuning.fastpath and self.vnet_refused is None
        if self.vnet_refused:
            log.warning(
                "udp fast path off: the TUN refuses virtio-net headers (%s)", self.vnet_refused
            )
        try:
            socks = self._bind(tuning.workers)
        except BackendError:
            for fd in tun_fds:
                os.close(fd)
            raise
        setup = [self._table()]
        if self._subnet is not None:
            setup.append({"local": [str(self._subnet), str(self._network)]})
        from pyflannel.backend.udp.pool import WorkerPool

        pool = WorkerPool(
            self.mtu,
            tuning.datapath,
            fastpath,
            tuning.verbosity,
            tuning.priority,
        )
        try:
            pool.start(tun_fds, socks, setup)
        except OSError as e:
            raise BackendError(f"UDP backend: cannot start the data-path workers: {e}") from e
        finally:  # the workers hold their own copies; a queue nobody reads would drop flows
            for fd in tun_fds:
                os.close(fd)
            for sock in socks:
                sock.close()
        self.pool = pool
        self.index = await self.netlink.call(
            _prepare_tun, TUN_NAME, TXQUEUELEN_BATCHED if fastpath else TXQUEUELEN
        )
        _disable_ipv6(TUN_NAME)  # or its router solicitations would be tunnelled
        log.info(
            "UDP path up: %s (index %d, MTU %d), socket %s:%d, %d worker(s) %s, fast path %s",
            TUN_NAME,
            self.index,
            self.mtu,
            self.ext.iface_addr,
            self.port,
            tuning.workers,
            [p.pid for p in pool.processes],
            "on" if fastpath else "off",
        )

    def _bind(self, count: int) -> list[socket.socket]:
        """``count`` sockets on the interface address and port, one reuseport group."""
        socks: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                sock.bind((str(self.ext.iface_addr), self.port))
                sock.setblocking(False)
        except OSError as e:
            for sock in socks:
                sock.close()
            raise BackendError(
                f"UDP backend: cannot bind {self.ext.iface_addr}:{self.port}: {e.strerror}"
            ) from e
        if count > 1:
            from pyflannel.backend.udp import steering

            try:
                steering.attach(socks[0], count)
            except OSError as e:
                log.warning(
                    "UDP workers: the kernel refuses the steering program (%s); received "
                    "datagrams are spread by the outer addresses, so one peer's traffic "
                    "reaches one worker",
                    e,
                )
        return socks

    async def assign(self, subnet: IPv4Network, network: IPv4Network) -> list[str]:
        """Give flannel0 our subnet's network address; accept packets for our subnet."""
        self._subnet, self._network = subnet, network
        if self.pool is not None:
            self.pool.send({"local": [str(subnet), str(network)]})
        return await self.netlink.call(
            kernel.configure_device, self.index, TUN_NAME, subnet.network_address, network, self.mtu
        )

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Send the workers a new forwarding table (each swaps it in with one assignment)."""
        self._peers = list(peers)
        if self.pool is not None:
            self.pool.send(self._table())

    def _table(self) -> dict:
        from pyflannel.backend.udp.worker import table_message

        return table_message((p.subnet, p.public_ip, p.udp_port) for p in self._peers)

    async def ensure(self) -> list[str]:
        """Reconcile: restart the path if its device vanished or a worker died."""
        repaired = []
        index = await self.netlink.call(_tun_index, TUN_NAME)
        problem = self.problem()
        if index is None or index != self.index or problem:
            why = "device was deleted" if index is None or index != self.index else problem
            log.warning("UDP path: %s; restarting it", why)
            await asyncio.to_thread(self.stop)
            await self.start()
            repaired.append(f"UDP path restarted ({why})")
        if self._subnet is not None and self._network is not None:
            repaired += [f"{TUN_NAME} {c}" for c in await self.assign(self._subnet, self._network)]
        return repaired

    async def move(self, ext: ExtIface, mtu: int) -> None:
        """Rebind to a new underlay address (restarting the workers if running)."""
        self.ext, self.mtu = ext, mtu
        if self.running:
            await asyncio.to_thread(self.stop)
            await self.start()
            if self._subnet is not None and self._network is not None:
                await self.assign(self._subnet, self._network)

    def problem(self) -> str | None:
        """Why the data path stopped forwarding, if it did."""
        return self.pool.problem() if self.pool is not None else None

    def snapshot(self) -> dict | None:
        """The workers' counters, summed (None while the path is not running)."""
        return self.pool.snapshot() if self.pool is not None else None

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool = None


def _disable_ipv6(name: str) -> None:
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    except OSError:
        pass
