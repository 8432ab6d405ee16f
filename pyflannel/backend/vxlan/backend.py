"""The VXLAN backend: owns ``flannel.<VNI>``; per peer a neighbour, an FDB entry and an onlink
route (or a plain route with DirectRouting). On a dual-stack network (EnableIPv6) also
``flannel-v6.<VNI>`` over the underlay's IPv6 address, with the same three entries per peer
for its IPv6 subnet (BackendV6Data, PublicIPv6), as upstream.

Peers that can only speak UDP (pyflannel nodes whose kernel has no VXLAN) are reached through
a UDP path started on first need: their subnets are routed into ``flannel0``. This node says
it accepts that by advertising ``UDPPort`` in its BackendData, which upstream ignores; until
the path runs, a doorbell socket on that port starts it when a peer sends there. A VXLAN peer
that advertises ``UDPPort`` too can be moved to UDP when VXLAN fails on the way to it (the
path healer, ops/mesh/healer.py): its route goes into ``flannel0``, its neighbour and FDB
entries stay so that VXLAN is still probed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import dual_stack_mtu, overlay_mtu
from pyflannel.backend.plan import (
    KernelState,
    Peer,
    Peer6,
    PeerDataError,
    overlay_entries,
    tunnel_route,
)
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.udp import peer as udp
from pyflannel.backend.udp.backend import fall_back, fallback_port
from pyflannel.backend.udp.doorbell import Doorbell
from pyflannel.backend.udp.path import DEFAULT_PORT, DEFAULT_TUNING, UdpPath, UdpTuning
from pyflannel.backend.udp.peer import udp_peer
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.backend.vxlan import netlink as vxlan_netlink
from pyflannel.backend.vxlan.device import (
    VxlanConfig,
    VxlanSpec,
    device_name,
    incompatibilities,
    parse_vxlan_config,
    random_vtep_mac,
)
from pyflannel.backend.vxlan.peer import ENCAP_VXLAN, NAME, vxlan_peer, vxlan_peer6
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.links import Link
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
    backend = VxlanBackend(ctx.netlink, ctx.network, ctx.ext, udp_port, tuning)
    try:
        return backend, await backend.prepare()
    except BackendError as e:
        if fallback == "off":
            raise BackendError(f"{e} (and --backend-fallback=off)") from e
        return await fall_back(ctx, str(e))


class VxlanBackend(Backend):
    name = NAME

    def __init__(
        self,
        netlink: Netlink,
        network: NetworkConfig,
        ext: ExtIface,
        udp_port: int | None = None,
        udp_tuning: UdpTuning = DEFAULT_TUNING,
    ):
        super().__init__(netlink, network, ext)
        self.config: VxlanConfig = parse_vxlan_config(network.backend)
        self.spec = VxlanSpec(
            name=device_name(self.config.vni),
            vni=self.config.vni,
            local=ext.public_ip,
            link_index=ext.index,
            port=self.config.port,
            learning=self.config.learning,
            gbp=self.config.gbp,
            mtu=0,
        )
        self.spec6: VxlanSpec | None = None  # dual-stack: flannel-v6.<VNI>
        self._set_underlay(ext)
        self.device_name = self.spec.name
        self.device: Link | None = None
        self.device6: Link | None = None
        self.udp_port = udp_port  # None: this node does not accept UDP encapsulation
        self.udp = (
            UdpPath(
                netlink,
                ext,
                udp_port,
                overlay_mtu(udp.NAME, ext.mtu),
                udp_tuning,
            )
            if udp_port
            else None
        )
        self.doorbell: Doorbell | None = None  # the UDP port, while the path does not run
        self._udp_starting = asyncio.Lock()
        self.via_udp: set[IPv4Network] = set()  # VXLAN peers moved to UDP (the path healer)

    def _set_underlay(self, ext: ExtIface) -> None:
        """Device specs and MTUs for an underlay. The IPv4 device carries iface - 50; the
        IPv6 one iface - 70 (a 40-byte outer header); pods get one MTU that fits both."""
        link_mtu = self.config.mtu or ext.mtu
        mtu4 = overlay_mtu(NAME, link_mtu)
        self.spec = replace(self.spec, local=ext.public_ip, link_index=ext.index, mtu=mtu4)
        self.mtu = mtu4
        if self.network.enable_ipv6:
            if ext.iface_addr6 is None:
                raise BackendError(f"EnableIPv6 is set but {ext.name} has no IPv6 address")
            self.mtu = dual_stack_mtu(NAME, link_mtu)
            link_mtu6 = self.config.mtu or ext.v6_mtu
            self.mtu = min(self.mtu, dual_stack_mtu(NAME, link_mtu6))
            self.spec6 = replace(
                self.spec,
                name=device_name(self.config.vni, ipv6=True),
                local=ext.iface_addr6,
                link_index=ext.v6_index,
                mtu=overlay_mtu(NAME, link_mtu6, ipv6_underlay=True),
            )

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        if self.spec6 is not None:
            return (
                f"{self.config.mtu or self.ext.mtu} ({source}) - 70 (VXLAN over the IPv6 "
                "underlay; over IPv4 it is 50): one pod MTU that fits both families"
            )
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 50 (VXLAN overhead)"

    def devices(self) -> Devices:
        return Devices(
            overlay=self.device.index if self.device else None,
            tunnel=self.udp.index if self.udp and self.udp.running else None,
            networks=self.owned_networks,
            overlay6=self.device6.index if self.device6 else None,
        )

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        self.device = await self._ensure_device(self.spec, mac=None)
        if self.spec6 is not None:
            self.device6 = await self._ensure_device(self.spec6, mac=None)
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

    @property
    def link(self) -> Link:
        """The VXLAN device (after ``prepare``)."""
        assert self.device is not None, "prepare() first"
        return self.device

    def lease_attrs(self) -> LeaseAttrs:
        data: dict[str, Any] = {"VNI": self.spec.vni, "VtepMAC": self.link.mac}
        if self.udp_port:
            data["UDPPort"] = self.udp_port
        v6_data = (
            {"VNI": self.spec.vni, "VtepMAC": self.device6.mac}
            if self.device6 is not None
            else None
        )
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
            self._set_underlay(ext)
            self.device = await self._ensure_device(self.spec, mac=self.link.mac)
            if self.spec6 is not None:
                mac6 = self.device6.mac if self.device6 else None
                self.device6 = await self._ensure_device(self.spec6, mac=mac6)
            await self._configure_device()
            if self.udp is not None:
                await self.udp.move(ext, overlay_mtu(udp.NAME, ext.mtu))
                if not self.udp.running and self.lease is not None:
                    self._listen_for_udp()  # on the new address
            self.kernel.repair_wanted.set()  # entries on the new device: the reconciler restores them
        return self.lease_attrs()

    async def _ensure_device(self, spec: VxlanSpec, mac: str | None) -> Link:
        link = await self.netlink.call(vxlan_netlink.find_link, spec.name)
        if link is not None:
            reasons = incompatibilities(link, spec)
            if not reasons:
                log.info("keeping existing device %s (VTEP MAC %s)", link.name, link.mac)
                return link
            log.warning("recreating %s: existing device has %s", link.name, ", ".join(reasons))
            await self.netlink.call(kernel.delete_link, link.index)
        try:
            link = await self.netlink.call(
                vxlan_netlink.create_vxlan, spec, mac or random_vtep_mac()
            )
        except Exception as e:
            raise BackendError(
                f"cannot create VXLAN device {spec.name} (VNI {spec.vni}, "
                f"port {spec.effective_port}, via {self.ext.name}): {kernel.describe_error(e)}"
            ) from e
        log.info(
            "created %s: VNI %d, local %s, port %d, MTU %d, VTEP MAC %s",
            link.name,
            spec.vni,
            spec.local,
            spec.effective_port,
            spec.mtu,
            link.mac,
        )
        return link

    async def _assign(self, lease: Lease) -> None:
        await self._configure_device()
        if self.udp and self.udp.running:
            await self.udp.assign(lease.subnet, self.network.cidr)
        elif self.udp is not None:
            self._listen_for_udp()

    # -- the UDP path, started on need -----------------------------------------------------

    def _listen_for_udp(self) -> None:
        """Until the UDP path runs, its port answers the lease's UDPPort promise."""
        assert self.udp is not None
        if self.doorbell is not None:
            self.doorbell.close()
        self.doorbell = Doorbell(self.ext.iface_addr, self.udp.port, self._may_send_udp, self._rung)
        self.doorbell.open()

    def _may_send_udp(self, sender: str) -> bool:
        return any(str(p.public_ip) == sender and p.udp_port for p in self.peers.values())

    def _rung(self, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.start_udp(f"peer at {sender} sends UDP encapsulation")
        )
        task.add_done_callback(_log_failure)

    async def start_udp(self, why: str) -> None:
        """Start the UDP path (once; later calls wait for it)."""
        assert self.udp is not None
        async with self._udp_starting:
            if self.udp.running:
                return
            if self.doorbell is not None:
                self.doorbell.close()  # the workers bind the port
            log.info("%s: starting the UDP path", why)
            await self.udp.start()
            kernel.loose_reverse_path(TUN_NAME)
            if self.lease is not None:
                await self.udp.assign(self.lease.subnet, self.network.cidr)

    async def _configure_device(self) -> list[str]:
        """The lease's address on each device: ``<subnet>.0/32`` on flannel.<VNI>, and
        ``<IPv6 subnet>::/128`` on flannel-v6.<VNI>."""
        lease = self.held_lease
        changed = await self.netlink.call(
            kernel.configure_device,
            self.link.index,
            self.link.name,
            lease.subnet.network_address,
            self.network.cidr,
            self.spec.mtu,
        )
        if self.udp is not None:  # a peer may come in over either encapsulation
            kernel.loose_reverse_path(self.link.name)
        cidr6 = self.network.cidr6
        if self.device6 is not None and self.spec6 is not None and cidr6 is not None:
            if lease.ipv6_subnet is None:
                raise BackendError(f"the lease {lease.key} has no IPv6 subnet")
            changed += await self.netlink.call(
                kernel.configure_device,
                self.device6.index,
                self.device6.name,
                lease.ipv6_subnet.network_address,
                cidr6,
                self.spec6.mtu,
            )
        return changed

    async def ensure_devices(self) -> list[str]:
        repaired = []
        link = await self.netlink.call(vxlan_netlink.find_link, self.spec.name)
        if link is None or incompatibilities(link, self.spec) or link.mac != self.link.mac:
            what = "was deleted" if link is None else "was changed"
            self.device = await self._ensure_device(self.spec, mac=self.link.mac)
            repaired.append(f"device {self.spec.name} {what}; recreated")
        else:
            self.device = link
        if self.spec6 is not None and self.device6 is not None:
            link6 = await self.netlink.call(vxlan_netlink.find_link, self.spec6.name)
            if (
                link6 is None
                or incompatibilities(link6, self.spec6)
                or link6.mac != self.device6.mac
            ):
                what = "was deleted" if link6 is None else "was changed"
                self.device6 = await self._ensure_device(self.spec6, mac=self.device6.mac)
                repaired.append(f"device {self.spec6.name} {what}; recreated")
            else:
                self.device6 = link6
        repaired += [f"device {c}" for c in await self._configure_device()]
        if self.udp and self.udp.running:
            repaired += await self.udp.ensure()
        return repaired

    # -- peers -----------------------------------------------------------------------------

    async def peer(self, lease: Lease) -> Peer:
        # Only an explicit "udp" lease (a pyflannel node that fell back) is reached over UDP:
        # a lease without BackendType in a vxlan network is junk or an alloc-only node.
        if lease.attrs.backend_type == udp.NAME and self.udp is not None:
            peer = udp_peer(lease, self.udp.port, routed=True)
            await self.start_udp(f"peer {lease.subnet} speaks only UDP")
            return peer
        peer = vxlan_peer(lease)
        if self.udp is not None:
            try:
                port = udp.udp_port(lease, self.udp.port)
            except PeerDataError as e:
                log.warning("lease %s: %s; it cannot be reached over UDP", lease.subnet, e)
                port = None
            if port:
                peer = replace(peer, udp_port=port)
                if peer.subnet in self.via_udp:
                    peer = replace(peer, encap=udp.ENCAP_UDP, entries=_over_udp(peer))
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
        v6 = (self.spec6.name,) if self.spec6 is not None else ()
        return v6 + ((TUN_NAME,) if self.udp is not None and self.udp.running else ())

    @property
    def encapsulation_port(self) -> int | None:
        return self.spec.effective_port

    def encapsulating_peers(self) -> list[str]:
        """Peers sending VXLAN here: those sent VXLAN, and those moved to UDP (their own
        direction is theirs to choose)."""
        return [
            str(p.public_ip)
            for p in self.peers.values()
            if p.encap == ENCAP_VXLAN or p.subnet in self.via_udp
        ]

    def peers_changed(self) -> None:
        """The UDP path's table: every peer that accepts UDP (the routes decide who is sent
        that way; the healer's probes may go that way to any of them)."""
        if self.udp is not None:
            self.udp.set_peers(p for p in self.peers.values() if p.udp_port)

    # -- the path healer's questions (ops/mesh/healer.py AlternatePaths) -------------------

    def why_not_healing(self) -> str | None:
        """Why peers cannot be moved to UDP here, if they cannot."""
        if self.udp is None:
            return (
                "this node does not accept UDP encapsulation (a dual-stack network, "
                "--backend-fallback=off, or flannel0 is another network's)"
            )
        if self.udp.mtu < self.mtu:
            return (
                f"the UDP path carries {self.udp.mtu} bytes, less than the pod MTU {self.mtu} "
                "(Backend.MTU above the interface's): full-size packets would not fit"
            )
        return None

    def heal_candidates(self) -> list[Peer]:
        if self.udp is None:
            return []
        return [
            p
            for p in self.peers.values()
            if p.udp_port and (p.encap == ENCAP_VXLAN or p.subnet in self.via_udp)
        ]

    def unhealable(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.encap == ENCAP_VXLAN and not p.udp_port]

    def overlay_index(self) -> int | None:
        return self.device.index if self.device else None

    async def udp_index(self) -> int | None:
        if self.udp is None:
            return None
        try:
            await self.start_udp("probing the UDP path of a peer VXLAN does not reach")
        except BackendError as e:
            log.warning("path healing: %s", e)
            return None
        return self.udp.index

    def own_address(self) -> IPv4Address:
        return self.held_lease.subnet.network_address

    async def reroute(self, subnet: IPv4Network, via_udp: bool) -> None:
        """Route a VXLAN peer into the UDP path, or back onlink via the VXLAN device."""
        if via_udp:
            self.via_udp.add(subnet)
        else:
            self.via_udp.discard(subnet)
        peer = self.peers.get(subnet)
        if peer is None or not peer.vtep_mac:
            return
        if via_udp:
            moved = replace(peer, encap=udp.ENCAP_UDP, entries=_over_udp(peer))
        else:
            moved = replace(peer, encap=ENCAP_VXLAN, entries=vxlan_entries(peer))
        await self.kernel.replace_peer(moved)

    def datapath_stats(self) -> dict | None:
        return self.udp.snapshot() if self.udp is not None else None

    def datapath_problem(self) -> str | None:
        return self.udp.problem() if self.udp is not None else None

    def status_details(self) -> dict[str, Any]:
        details = {
            "port": self.spec.effective_port,
            "vni": self.spec.vni,
            "vtep_mac": self.device.mac if self.device else None,
        }
        if self.spec6 is not None:
            details.update(
                device6=self.spec6.name, vtep_mac6=self.device6.mac if self.device6 else None
            )
        return details

    async def close(self) -> None:
        if self.doorbell is not None:
            self.doorbell.close()
        if self.udp is not None:
            await asyncio.to_thread(self.udp.stop)  # waits for the workers to exit


def vxlan_entries(peer: Peer) -> KernelState:
    """A VXLAN peer's neighbour, FDB entry and onlink route."""
    return overlay_entries(peer.subnet, peer.vtep_mac, peer.public_ip)


def _over_udp(peer: Peer) -> KernelState:
    """A VXLAN peer moved to UDP: its route into flannel0; its neighbour and FDB entry stay
    (the healer keeps probing VXLAN through them)."""
    entries = vxlan_entries(peer)
    entries.routes = tunnel_route(peer.subnet).routes
    return entries


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the UDP path did not start: %s", task.exception())


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
    link = vxlan_netlink.find_link(ipr, name) if name else None
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
