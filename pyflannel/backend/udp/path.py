"""The UDP encapsulation path of a node: TUN device ``flannel0``, a UDP socket on the
interface address, and the forwarder between them.

Used by the UDP backend (every peer goes this way) and by the VXLAN backend for peers that
can only speak UDP (nodes that fell back). Kernel routes into ``flannel0`` are the owning
backend's business (plan.py); this class owns the device, the socket and the packet threads.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.backend import kernel
from pyflannel.backend.plan import Peer
from pyflannel.backend.udp.forwarder import Forwarder
from pyflannel.backend.udp.routes import ForwardingTable
from pyflannel.backend.udp.tun import TUN_NAME, TunError, open_tun
from pyflannel.errors import BackendError
from pyflannel.iface import ExtIface
from pyflannel.netlink import Netlink

log = logging.getLogger(__name__)

DEFAULT_PORT = 8285
TXQUEUELEN = 1000
TXQUEUELEN_BATCHED = 4000  # read in batches, the default 500 overflows (library notes)


def _tun_index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _prepare_tun(ipr, name: str, txqueuelen: int) -> int:
    index = ipr.link_lookup(ifname=name)[0]
    ipr.link("set", index=index, txqlen=txqueuelen)
    return index


class UdpPath:
    def __init__(
        self,
        netlink: Netlink,
        ext: ExtIface,
        port: int,
        mtu: int,
        datapath: str = "auto",
        fastpath: bool = False,
    ):
        self.netlink = netlink
        self.ext = ext
        self.port = port
        self.mtu = mtu
        self.datapath = datapath
        self.fastpath = fastpath
        self.index: int | None = None
        self.forwarder: Forwarder | None = None
        self._tun_fd: int | None = None
        self._sock: socket.socket | None = None
        self._peers: list[Peer] = []
        self._subnet: IPv4Network | None = None
        self._network: IPv4Network | None = None

    @property
    def running(self) -> bool:
        return self.forwarder is not None

    async def start(self) -> None:
        """Attach to (or create) flannel0, bind the socket, start the packet threads."""
        fastpath = self.fastpath
        try:
            self._tun_fd = open_tun(TUN_NAME, vnet_hdr=fastpath)
        except TunError as e:
            if not fastpath:
                raise BackendError(f"UDP backend: {e}") from e
            log.warning("udp fast path off: the TUN refuses virtio-net headers (%s)", e)
            fastpath = False
            try:
                self._tun_fd = open_tun(TUN_NAME)
            except TunError as e2:
                raise BackendError(f"UDP backend: {e2}") from e2
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self._sock.bind((str(self.ext.iface_addr), self.port))
            self._sock.setblocking(False)
        except OSError as e:
            self._close_fds()
            raise BackendError(
                f"UDP backend: cannot bind {self.ext.iface_addr}:{self.port}: {e.strerror}"
            ) from e
        self.index = await self.netlink.call(
            _prepare_tun, TUN_NAME, TXQUEUELEN_BATCHED if fastpath else TXQUEUELEN
        )
        _disable_ipv6(TUN_NAME)  # or its router solicitations would be tunnelled
        self.forwarder = Forwarder(self._tun_fd, self._sock, self.mtu, self.datapath, fastpath)
        self.forwarder.table = ForwardingTable.build(
            (p.subnet, p.public_ip, p.udp_port) for p in self._peers
        )
        if self._subnet is not None:
            self.forwarder.set_local(self._subnet, self._network)
        self.forwarder.start()
        log.info(
            "UDP path up: %s (index %d, MTU %d), socket %s:%d, data path %s",
            TUN_NAME,
            self.index,
            self.mtu,
            self.ext.iface_addr,
            self.port,
            self.forwarder.datapath,
        )

    async def assign(self, subnet: IPv4Network, network: IPv4Network) -> list[str]:
        """Give flannel0 our subnet's network address; accept packets for our subnet."""
        self._subnet, self._network = subnet, network
        if self.forwarder is not None:
            self.forwarder.set_local(subnet, network)
        return await self.netlink.call(
            kernel.configure_device, self.index, TUN_NAME, subnet.network_address, network, self.mtu
        )

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Swap in a new forwarding table (one reference assignment: no lock, no stall)."""
        self._peers = list(peers)
        if self.forwarder is not None:
            self.forwarder.table = ForwardingTable.build(
                (p.subnet, p.public_ip, p.udp_port) for p in self._peers
            )

    async def ensure(self) -> list[str]:
        """Reconcile: restart the path if its device vanished or a thread died."""
        repaired = []
        index = await self.netlink.call(_tun_index, TUN_NAME)
        if index is None or index != self.index or not self.forwarder.alive:
            why = (
                "device was deleted"
                if index is None or index != self.index
                else self.forwarder.failed
            )
            log.warning("UDP path: %s; restarting it", why)
            self.stop()
            await self.start()
            repaired.append(f"UDP path restarted ({why})")
        if self._subnet is not None:
            repaired += [f"{TUN_NAME} {c}" for c in await self.assign(self._subnet, self._network)]
        return repaired

    async def move(self, ext: ExtIface, mtu: int) -> None:
        """Rebind to a new underlay address (restarting the packet threads if running)."""
        self.ext, self.mtu = ext, mtu
        if self.running:
            self.stop()
            await self.start()
            if self._subnet is not None:
                await self.assign(self._subnet, self._network)

    def problem(self) -> str | None:
        """Why the packet threads stopped, if they did."""
        if self.forwarder is not None and not self.forwarder.alive:
            return self.forwarder.failed or "a data-path thread exited"
        return None

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        self._close_fds()

    def _close_fds(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun_fd is not None:
            os.close(self._tun_fd)  # the device persists: routes and address stay
            self._tun_fd = None


def _disable_ipv6(name: str) -> None:
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    except OSError:
        pass
