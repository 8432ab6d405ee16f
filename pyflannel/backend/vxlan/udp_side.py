"""The UDP path beside a VXLAN network: for peers that speak only UDP (pyflannel nodes whose
kernel has no VXLAN) and for VXLAN peers the path healer moved. Started on first need; until
then a doorbell socket on its port (the lease's ``UDPPort`` promise) starts it when a peer
sends there. Follows the underlay, repaired with the devices, its forwarding table swapped
when the peers change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network

from pyflannel.backend import kernel
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import Peer
from pyflannel.backend.udp import peer as udp
from pyflannel.backend.udp.doorbell import Doorbell
from pyflannel.backend.udp.path import UdpPath, UdpTuning
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.lease import Lease

log = logging.getLogger(__name__)


class UdpSide:
    def __init__(
        self,
        netlink: Netlink,
        ext: ExtIface,
        port: int,
        tuning: UdpTuning,
        may_send: Callable[[str], bool],
    ):
        self.path = UdpPath(netlink, ext, port, overlay_mtu(udp.NAME, ext.mtu), tuning)
        self.may_send = may_send  # a sender's address: is it a peer that speaks UDP?
        self.doorbell: Doorbell | None = None  # the UDP port, while the path does not run
        self._starting = asyncio.Lock()
        self.lease: Lease | None = None
        self.network: IPv4Network | None = None

    @property
    def port(self) -> int:
        return self.path.port

    @property
    def running(self) -> bool:
        return self.path.running

    @property
    def mtu(self) -> int:
        return self.path.mtu

    @property
    def index(self) -> int | None:
        return self.path.index

    async def assign(self, lease: Lease, network: IPv4Network) -> None:
        """This node's lease: the path's address if it runs, else listen for the first peer."""
        self.lease, self.network = lease, network
        if self.running:
            await self.path.assign(lease.subnet, network)
        else:
            self.listen()

    def listen(self) -> None:
        """Until the UDP path runs, its port answers the lease's UDPPort promise."""
        if self.doorbell is not None:
            self.doorbell.close()
        self.doorbell = Doorbell(self.path.ext.iface_addr, self.port, self.may_send, self._rung)
        self.doorbell.open()

    def _rung(self, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.start(f"peer at {sender} sends UDP encapsulation")
        )
        task.add_done_callback(_log_failure)

    async def start(self, why: str) -> None:
        """Start the UDP path (once; later calls wait for it)."""
        async with self._starting:
            if self.running:
                return
            if self.doorbell is not None:
                self.doorbell.close()  # the workers bind the port
            log.info("%s: starting the UDP path", why)
            await self.path.start()
            kernel.loose_reverse_path(TUN_NAME)
            if self.lease is not None and self.network is not None:
                await self.path.assign(self.lease.subnet, self.network)

    async def move(self, ext: ExtIface) -> None:
        """Rebind on a new underlay (the doorbell too, while the path does not run)."""
        await self.path.move(ext, overlay_mtu(udp.NAME, ext.mtu))
        if not self.running and self.lease is not None:
            self.listen()  # on the new address

    async def repair(self) -> list[str]:
        return await self.path.ensure() if self.running else []

    def set_peers(self, peers: Iterable[Peer]) -> None:
        self.path.set_peers(peers)

    def stats(self) -> dict | None:
        return self.path.snapshot()

    def problem(self) -> str | None:
        return self.path.problem()

    async def close(self) -> None:
        if self.doorbell is not None:
            self.doorbell.close()
        await asyncio.to_thread(self.path.stop)  # waits for the workers to exit


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the UDP path did not start: %s", task.exception())
