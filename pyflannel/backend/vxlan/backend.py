"""The VXLAN backend: owns ``flannel.<VNI>``; per peer a neighbour, an FDB entry and an onlink
route (or a plain route with DirectRouting).

Peers that can only speak UDP (pyflannel nodes whose kernel has no VXLAN) are reached through
a UDP path started on first need: their subnets are routed into ``flannel0``. This node says
it accepts that by advertising ``UDPPort`` in its BackendData, which upstream ignores.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import (
    UDP_BACKEND,
    VXLAN_BACKEND,
    Encap,
    KernelState,
    Peer,
    peer_entries,
    udp_peer,
    vxlan_peer,
)
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.udp.backend import fall_back
from pyflannel.backend.udp.path import DEFAULT_TUNING, UdpPath, UdpTuning
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.backend.vxlan.device import (
    VxlanConfig,
    VxlanLink,
    VxlanSpec,
    device_name,
    incompatibilities,
    parse_vxlan_config,
    random_vtep_mac,
)
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger(__name__)


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "vxlan": the VXLAN device, or UDP if it cannot be had (unless
    --backend-fallback=off), or UDP if told so (--backend-fallback=udp)."""
    if ctx.fallback == "udp":
        return await fall_back(ctx, "forced by --backend-fallback=udp")
    udp_port = None if ctx.fallback == "off" else ctx.udp_fallback_port
    backend = VxlanBackend(ctx.netlink, ctx.network, ctx.ext, udp_port, ctx.udp_tuning)
    try:
        return backend, await backend.prepare()
    except BackendError as e:
        if ctx.fallback == "off":
            raise BackendError(f"{e} (and --backend-fallback=off)") from e
        return await fall_back(ctx, str(e))


class VxlanBackend(Backend):
    name = VXLAN_BACKEND

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
        self.mtu = overlay_mtu(VXLAN_BACKEND, self.config.mtu or ext.mtu)
        self.spec = VxlanSpec(
            name=device_name(self.config.vni),
            vni=self.config.vni,
            local=ext.public_ip,
            link_index=ext.index,
            port=self.config.port,
            learning=self.config.learning,
            gbp=self.config.gbp,
            mtu=self.mtu,
        )
        self.device_name = self.spec.name
        self.device: VxlanLink | None = None
        self.udp_port = udp_port  # None: this node does not accept UDP encapsulation
        self.udp = (
            UdpPath(
                netlink,
                ext,
                udp_port,
                overlay_mtu(UDP_BACKEND, ext.mtu),
                udp_tuning,
            )
            if udp_port
            else None
        )

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 50 (VXLAN overhead)"

    def devices(self) -> Devices:
        return Devices(
            vxlan=self.device.index if self.device else None,
            tun=self.udp.index if self.udp and self.udp.running else None,
            networks=self.owned_networks,
        )

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        self.device = await self._ensure_device(mac=None)
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
    def link(self) -> VxlanLink:
        """The VXLAN device (after ``prepare``)."""
        assert self.device is not None, "prepare() first"
        return self.device

    def lease_attrs(self) -> LeaseAttrs:
        data: dict[str, Any] = {"VNI": self.spec.vni, "VtepMAC": self.link.mac}
        if self.udp_port:
            data["UDPPort"] = self.udp_port
        return LeaseAttrs(
            public_ip=self.ext.public_ip, backend_type=VXLAN_BACKEND, backend_data=data
        )

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """The underlay address or interface changed: recreate the device on it with the
        same MAC (so peers need only a new FDB destination) and rebind the UDP path."""
        async with self.kernel.lock:
            self.ext = ext
            self.mtu = overlay_mtu(VXLAN_BACKEND, self.config.mtu or ext.mtu)
            self.spec = replace(self.spec, local=ext.public_ip, link_index=ext.index, mtu=self.mtu)
            self.device = await self._ensure_device(mac=self.link.mac)
            await self._configure_device()
            if self.udp is not None:
                await self.udp.move(ext, overlay_mtu(UDP_BACKEND, ext.mtu))
            self.kernel.repair_wanted.set()  # entries on the new device: the reconciler restores them
        return self.lease_attrs()

    async def _ensure_device(self, mac: str | None) -> VxlanLink:
        link = await self.netlink.call(kernel.find_link, self.spec.name)
        if link is not None:
            reasons = incompatibilities(link, self.spec)
            if not reasons:
                log.info("keeping existing device %s (VTEP MAC %s)", link.name, link.mac)
                return link
            log.warning("recreating %s: existing device has %s", link.name, ", ".join(reasons))
            await self.netlink.call(kernel.delete_link, link.index)
        try:
            link = await self.netlink.call(kernel.create_vxlan, self.spec, mac or random_vtep_mac())
        except Exception as e:
            raise BackendError(
                f"cannot create VXLAN device {self.spec.name} (VNI {self.spec.vni}, "
                f"port {self.spec.effective_port}, via {self.ext.name}): {kernel.describe_error(e)}"
            ) from e
        log.info(
            "created %s: VNI %d, local %s, port %d, MTU %d, VTEP MAC %s",
            link.name,
            self.spec.vni,
            self.spec.local,
            self.spec.effective_port,
            self.mtu,
            link.mac,
        )
        return link

    async def _assign(self, lease: Lease) -> None:
        await self._configure_device()
        if self.udp and self.udp.running:
            await self.udp.assign(lease.subnet, self.network.cidr)

    async def _configure_device(self) -> list[str]:
        return await self.netlink.call(
            kernel.configure_device,
            self.link.index,
            self.link.name,
            self.held_lease.subnet.network_address,
            self.network.cidr,
            self.mtu,
        )

    async def ensure_devices(self) -> list[str]:
        repaired = []
        link = await self.netlink.call(kernel.find_link, self.spec.name)
        if link is None or incompatibilities(link, self.spec) or link.mac != self.link.mac:
            what = "was deleted" if link is None else "was changed"
            self.device = await self._ensure_device(mac=self.link.mac)
            repaired.append(f"device {self.spec.name} {what}; recreated")
        else:
            self.device = link
        repaired += [f"device {c}" for c in await self._configure_device()]
        if self.udp and self.udp.running:
            repaired += await self.udp.ensure()
        return repaired

    # -- peers -----------------------------------------------------------------------------

    async def peer(self, lease: Lease) -> Peer:
        # Only an explicit "udp" lease (a pyflannel node that fell back) is reached over UDP:
        # a lease without BackendType in a vxlan network is junk or an alloc-only node.
        if lease.attrs.backend_type == UDP_BACKEND and self.udp is not None:
            peer = udp_peer(lease, self.udp.port)
            if not self.udp.running:
                log.info("peer %s speaks only UDP: starting the UDP path for it", lease.subnet)
                await self.udp.start()
                await self.udp.assign(self.held_lease.subnet, self.network.cidr)
            return peer
        peer = vxlan_peer(lease)
        if self.config.direct_routing and await self.netlink.call(
            kernel.directly_reachable, peer.public_ip, self.ext.index
        ):
            peer = vxlan_peer(lease, direct=True)
        return peer

    def entries(self, peer: Peer) -> KernelState:
        return peer_entries(peer)

    def peers_changed(self) -> None:
        if self.udp is not None:
            self.udp.set_peers(p for p in self.peers.values() if p.encap == Encap.UDP)

    def datapath_stats(self) -> dict | None:
        return self.udp.snapshot() if self.udp is not None else None

    def datapath_problem(self) -> str | None:
        return self.udp.problem() if self.udp is not None else None

    def _snapshot_details(self) -> dict[str, Any]:
        return {
            "port": self.spec.effective_port,
            "vni": self.spec.vni,
            "vtep_mac": self.device.mac if self.device else None,
        }

    async def close(self) -> None:
        if self.udp is not None:
            await asyncio.to_thread(self.udp.stop)  # waits for the workers to exit
