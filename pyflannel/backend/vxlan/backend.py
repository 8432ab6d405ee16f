"""The VXLAN backend: owns ``flannel.<VNI>`` (devices.py); per peer a neighbour, an FDB entry
and an onlink route (or a plain route with DirectRouting). On a dual-stack network (EnableIPv6) also
``flannel-v6.<VNI>`` over the underlay's IPv6 address, with the same three entries per peer
for its IPv6 subnet (BackendV6Data, PublicIPv6), as upstream.

Peers that can only speak UDP (pyflannel nodes whose kernel has no VXLAN) are reached through
a UDP path started on first need: their subnets are routed into ``flannel0``. This node says
it accepts that by advertising ``UDPPort`` in its BackendData, which upstream ignores; until
the path runs, a doorbell socket on that port starts it when a peer sends there. A VXLAN peer
that advertises ``UDPPort`` too can be moved to UDP when VXLAN fails on the way to it (the
path healer, ops/mesh/healer.py, asking paths.py): its route goes into ``flannel0``, its
neighbour and FDB entries stay so that VXLAN is still probed. The UDP path: udp_side.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv6Network
from typing import TYPE_CHECKING, Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import Peer, Peer6, PeerDataError
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.udp import peer as udp
from pyflannel.backend.udp.backend import fall_back, fallback_port
from pyflannel.backend.udp.path import DEFAULT_PORT, DEFAULT_TUNING, UdpTuning
from pyflannel.backend.udp.peer import udp_peer
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.backend.vxlan.device import VxlanConfig, parse_vxlan_config
from pyflannel.backend.vxlan.devices import VxlanDevices
from pyflannel.backend.vxlan.paths import VxlanPaths
from pyflannel.backend.vxlan.peer import ENCAP_VXLAN, NAME, vxlan_peer, vxlan_peer6
from pyflannel.backend.vxlan.udp_side import UdpSide
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs

if TYPE_CHECKING:
    from pyflannel.backend.offline import OfflineBackend

log = logging.getLogger(__name__)
DUAL_STACK = True  # carries IPv6 too (EnableIPv6), as upstream's


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "vxlan": the VXLAN device, or UDP if it cannot be had (unless
    --backend-fallback=off), or UDP if told so (--backend-fallback=udp)."""
    fallback = ctx.setting("backend_fallback", "auto")  # auto | udp | off
    if fallback == "udp":
        return await fall_back(ctx, "forced by --backend-fallback=udp")
    # A dual-stack network has no UDP-only nodes (UDP carries IPv4 only): no UDPPort, so the
    # lease is upstream's byte for byte.
    off = fallback == "off" or ctx.network.enable_ipv6
    udp_port = None if off else fallback_port(ctx)
    tuning = UdpTuning.from_settings(ctx.settings)
    backend = VxlanBackend(
        ctx.netlink, ctx.network, ctx.ext, udp_port, tuning, local_any=bool(ctx.setting("site", ""))
    )
    try:
        return backend, await backend.prepare()
    except BackendError as e:
        if fallback == "off":
            raise BackendError(f"{e} (and --backend-fallback=off)") from e
        return await fall_back(ctx, str(e))


class VxlanBackend(Backend):
    """The backend itself (upstream's vxlan.go / vxlan_network.go): the lease's attributes,
    what a lease means as a peer, its status; over its devices (devices.py), the UDP path
    beside them (udp_side.py) and the healer's second path per peer (paths.py)."""

    name = NAME

    def __init__(
        self,
        netlink: Netlink,
        network: NetworkConfig,
        ext: ExtIface,
        udp_port: int | None = None,
        udp_tuning: UdpTuning = DEFAULT_TUNING,
        local_any: bool = False,
    ):
        super().__init__(netlink, network, ext)
        self.config: VxlanConfig = parse_vxlan_config(network.backend)
        # flannel.<VNI> (+ v6); local_any: --site (devices.py)
        self.vteps = VxlanDevices(netlink, self.config, network, ext, local_any)
        self.device_name = self.vteps.spec.name
        self.mtu = self.vteps.mtu
        self.udp_port = udp_port  # None: this node does not accept UDP encapsulation
        self.udp = (
            UdpSide(netlink, ext, udp_port, udp_tuning, self._may_send_udp) if udp_port else None
        )
        self.paths = VxlanPaths(self)

    @property
    def mtu_reason(self) -> str:
        return self.vteps.mtu_reason

    def devices(self) -> Devices:
        d = self.vteps
        return Devices(
            overlay=d.device.index if d.device else None,
            tunnel=self.udp.index if self.udp and self.udp.running else None,
            networks=self.owned_networks,
            overlay6=d.device6.index if d.device6 else None,
        )

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        await self.vteps.prepare()
        if self.udp is not None:
            foreign = await self.netlink.call(kernel.foreign_addresses, TUN_NAME, self.network.cidr)
            if foreign:
                log.warning(
                    "%s belongs to another network on this host (address %s): this network "
                    "does not accept UDP-only peers (no UDPPort in the lease)",
                    TUN_NAME,
                    ", ".join(foreign),
                )
                self.udp = self.udp_port = None
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        data, v6_data = self.vteps.backend_data()
        if self.udp_port:
            data["UDPPort"] = self.udp_port
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            public_ipv6=self.ext.public_ipv6 if v6_data else None,
            backend_type=NAME,
            backend_data=data,
            backend_v6_data=v6_data,
        )

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """The underlay address or interface changed: recreate the device on it with the
        same MAC (so peers need only a new FDB destination) and rebind the UDP path."""
        async with self.kernel.lock:
            self.ext = ext
            await self.vteps.move(ext)
            self.mtu = self.vteps.mtu
            await self.vteps.configure(self.held_lease, loose_reverse_path=bool(self.udp))
            if self.udp is not None:
                await self.udp.move(ext)
            self.kernel.repair_wanted.set()  # entries on the new device: the reconciler restores them
        return self.lease_attrs()

    async def configure(self, lease: Lease) -> None:
        await self.vteps.configure(lease, loose_reverse_path=bool(self.udp))
        if self.udp is not None:
            await self.udp.assign(lease, self.network.cidr)

    async def ensure_devices(self) -> list[str]:
        repaired = await self.vteps.repair()
        repaired += [
            f"device {c}"
            for c in await self.vteps.configure(self.held_lease, loose_reverse_path=bool(self.udp))
        ]
        if self.udp is not None:
            repaired += await self.udp.repair()
        return repaired

    def _may_send_udp(self, sender: str) -> bool:
        return any(str(p.public_ip) == sender and p.udp_port for p in self.peers.values())

    # -- peers -----------------------------------------------------------------------------

    async def peer(self, lease: Lease) -> Peer:
        # Only an explicit "udp" lease (a pyflannel node that fell back) is reached over UDP:
        # a lease without BackendType in a vxlan network is junk or an alloc-only node.
        if lease.attrs.backend_type == udp.NAME and self.udp is not None:
            peer = udp_peer(lease, self.udp.port, routed=True)
            await self.udp.start(f"peer {lease.subnet} speaks only UDP")
            return peer
        peer = vxlan_peer(lease)
        if self.udp is not None:
            try:
                port = udp.udp_port(lease, self.udp.port)
            except PeerDataError as e:
                log.warning("lease %s: %s; it cannot be reached over UDP", lease.subnet, e)
                port = None
            if port:
                peer = self.paths.moved(replace(peer, udp_port=port))
        if self.config.direct_routing and await self.netlink.call(
            kernel.directly_reachable, peer.public_ip, self.ext.index
        ):
            peer = vxlan_peer(lease, direct=True)

        async def half(subnet6: IPv6Network) -> Peer6:
            v6 = vxlan_peer6(lease, subnet6)
            if self.config.direct_routing and await self.netlink.call(
                kernel.directly_reachable, v6.public_ip, self.ext.index
            ):
                v6 = vxlan_peer6(lease, subnet6, direct=True)
            return v6

        return await self.with_ipv6_half(peer, lease, half)

    def extra_devices(self) -> tuple[str, ...]:
        v6 = self.vteps.names()[1:]
        return v6 + ((TUN_NAME,) if self.udp is not None and self.udp.running else ())

    def peers_changed(self) -> None:
        """The UDP path's table: every peer that accepts UDP (the routes decide who is sent
        that way; the healer's probes may go that way to any of them)."""
        if self.udp is not None:
            self.udp.set_peers(p for p in self.peers.values() if p.udp_port)

    # -- capabilities: the peer filter's port, the UDP path's counters ---------------------

    @property
    def encapsulation_port(self) -> int | None:
        return self.vteps.spec.effective_port

    def encapsulating_peers(self) -> list[str]:
        """Peers sending VXLAN here: those sent VXLAN, and those moved to UDP (their own
        direction is theirs to choose)."""
        return [
            str(p.public_ip)
            for p in self.peers.values()
            if p.encap == ENCAP_VXLAN or p.subnet in self.paths.via_udp
        ]

    def datapath_stats(self) -> dict | None:
        return self.udp.stats() if self.udp is not None else None

    def datapath_problem(self) -> str | None:
        return self.udp.problem() if self.udp is not None else None

    def status_details(self) -> dict[str, Any]:
        return self.vteps.status_details()

    async def close(self) -> None:
        if self.udp is not None:
            await self.udp.close()


def offline(ipr, network) -> OfflineBackend | None:
    """This network's flannel.<VNI> (and flannel0, for UDP-only peers), daemon or not."""
    from pyflannel.backend.offline import OfflineBackend  # status and trace, not the daemon

    name = next(
        (
            n
            for link in ipr.get_links()
            for n in (link.get_attr("IFLA_IFNAME") or "",)
            if n.startswith("flannel.") and not kernel.foreign_addresses(ipr, n, network)
        ),
        None,
    )
    link = ipr.get_link(name) if name else None
    if link is None:
        return None
    tun = (
        None
        if kernel.foreign_addresses(ipr, TUN_NAME, network)
        else kernel.link_index(ipr, TUN_NAME)
    )
    return OfflineBackend(
        NAME,
        link.name,
        Devices(overlay=link.index, tunnel=tun, networks=(network,)),
        lambda lease: (
            vxlan_peer(lease)
            if lease.attrs.backend_type == NAME
            else udp_peer(lease, DEFAULT_PORT, routed=True)
        ),
        {
            "vni": link.vxlan.vni if link.vxlan else None,
            "vtep_mac": link.mac,
            "port": link.vxlan.port if link.vxlan else 0,
        },
    )
