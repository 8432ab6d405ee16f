"""The UDP backend: every peer through ``flannel0`` and the userspace forwarder.

Two modes, one data path:
- ``udp``: the cluster's config says ``"Type": "udp"``. Exactly upstream on the wire and in
  etcd: lease ``{"PublicIP":…,"PublicIPv6":null}``, one route for the whole network into
  ``flannel0``, all nodes on the same port (Backend.Port, default 8285).
- ``fallback``: the cluster is VXLAN but this node cannot (or is told not to) create a VXLAN
  device. Its lease says so (BackendType "udp" with its Port and the reason); pyflannel VXLAN
  peers that advertise ``UDPPort`` are reached over UDP, upstream VXLAN peers cannot be.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import Peer, tunnel_route
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.udp.path import DEFAULT_PORT, DEFAULT_TUNING, UdpPath, UdpTuning
from pyflannel.backend.udp.peer import NAME, udp_peer
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.errors import BackendError, ConfigError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs

if TYPE_CHECKING:
    from pyflannel.backend.offline import OfflineBackend

log = logging.getLogger(__name__)


def parse_udp_port(backend: dict) -> int:
    port = {k.lower(): v for k, v in backend.items()}.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"Backend.Port must be an integer from 1 to 65535, not {port!r}")
    return port


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """The cluster's own UDP backend (registry entry "udp")."""
    backend = UdpBackend(
        ctx.netlink,
        ctx.network,
        ctx.ext,
        parse_udp_port(ctx.network.backend),
        tuning=UdpTuning.from_settings(ctx.settings),
    )
    return backend, await backend.prepare()


def fallback_port(ctx: BackendContext) -> int:
    """The UDP port for UDP-only peers of a vxlan network (--udp-fallback-port)."""
    return int(ctx.setting("udp_fallback_port", DEFAULT_PORT))


async def fall_back(ctx: BackendContext, reason: str) -> tuple[Backend, LeaseAttrs]:
    """A node of a vxlan network that cannot (or must not) do VXLAN: UDP, said loudly."""
    if ctx.network.enable_ipv6:
        raise BackendError(
            f"cannot fall back to UDP ({reason}): the network is dual-stack (EnableIPv6) "
            "and UDP encapsulation carries IPv4 only"
        )
    port = fallback_port(ctx)
    log.error(
        "VXLAN FALLBACK: this node uses UDP encapsulation (port %d) instead of VXLAN: %s. "
        "pyflannel VXLAN peers reach it over UDP; upstream flannel VXLAN nodes cannot.",
        port,
        reason,
    )
    backend = UdpBackend(
        ctx.netlink,
        ctx.network,
        ctx.ext,
        port,
        fallback_reason=reason,
        tuning=UdpTuning.from_settings(ctx.settings),
    )
    return backend, await backend.prepare()


class UdpBackend(Backend):
    name = NAME
    device_name = TUN_NAME

    def __init__(
        self,
        netlink: Netlink,
        network: NetworkConfig,
        ext: ExtIface,
        port: int,
        fallback_reason: str = "",
        tuning: UdpTuning = DEFAULT_TUNING,
    ):
        super().__init__(netlink, network, ext)
        self.port = port
        self.fallback_reason = fallback_reason  # empty: the cluster's own backend is udp
        self.mtu = overlay_mtu(NAME, ext.mtu)
        self.path = UdpPath(netlink, ext, port, self.mtu, tuning)

    @property
    def mtu_reason(self) -> str:
        return f"{self.ext.mtu} ({self.ext.name} MTU) - 28 (UDP overhead)"

    def devices(self) -> Devices:
        return Devices(tunnel=self.path.index, networks=self.owned_networks)

    async def prepare(self) -> LeaseAttrs:
        await self.path.start()
        return self.lease_attrs()

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """The underlay address or interface changed: rebind the UDP path."""
        async with self.kernel.lock:
            self.ext = ext
            self.mtu = overlay_mtu(NAME, ext.mtu)
            await self.path.move(ext, self.mtu)
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        if not self.fallback_reason:
            return LeaseAttrs(public_ip=self.ext.public_ip)  # byte-identical to upstream's
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            backend_type=NAME,
            backend_data={
                "Port": self.port,
                "FallbackFrom": self.network.backend_type,
                "Reason": self.fallback_reason[:200],
            },
        )

    async def configure(self, lease: Lease) -> None:
        await self.path.assign(lease.subnet, self.network.cidr)
        # Like upstream: the whole network into flannel0; our own subnet is more specific
        # (on cni0), and a destination no peer owns gets ICMP net-unreachable from us.
        if not self.kernel.desired.state.routes:
            await self.kernel.add_entries(tunnel_route(self.network.cidr))

    async def ensure_devices(self) -> list[str]:
        return await self.path.ensure()

    async def peer(self, lease: Lease) -> Peer:
        return udp_peer(lease, self.port)

    def peers_changed(self) -> None:
        self.path.set_peers(self.peers.values())

    def datapath_stats(self) -> dict | None:
        return self.path.snapshot()

    def datapath_problem(self) -> str | None:
        return self.path.problem()

    def status_details(self) -> dict[str, Any]:
        return {"port": self.port, "fallback": self.fallback_reason or None}

    async def close(self) -> None:
        await asyncio.to_thread(self.path.stop)  # waits for the workers to exit


def offline(ipr, network) -> OfflineBackend | None:
    """This network's flannel0, daemon or not."""
    from pyflannel.backend.offline import OfflineBackend  # status and trace, not the daemon

    if kernel.foreign_addresses(ipr, TUN_NAME, network):
        return None
    index = kernel.link_index(ipr, TUN_NAME)
    if index is None:
        return None
    return OfflineBackend(
        NAME,
        TUN_NAME,
        Devices(tunnel=index, networks=(network,)),
        lambda lease: udp_peer(lease, DEFAULT_PORT),
    )
