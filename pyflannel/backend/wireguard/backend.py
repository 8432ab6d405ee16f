"""The wireguard backend: ``flannel-wg`` with one WireGuard peer per lease and one route for
the whole network through it (upstream's layout), MTU = interface - 80. On a dual-stack network
(upstream's default Mode "separate") also ``flannel-wg-v6`` on ListenPortV6, its peers at
``[PublicIPv6]:<port>`` with their IPv6 subnets, and the IPv6 network routed through it.

Two data planes behind one backend, chosen by ``--wireguard-datapath`` (``auto``: the kernel's
module if a link can be made, else userspace): the kernel's WireGuard, or Debian's
``wireguard-go`` started and supervised here. Both are configured with the same wanted device
(uapi.py), diffed against what the device reports on every reconcile, so a peer added,
changed, removed, or someone's ``wg set`` is followed or undone.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend, PeerEndpoint
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import (
    IPNetwork,
    KernelState,
    Peer,
    Peer6,
    PeerDataError,
    Route,
    Via,
)
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.wireguard.config import Mode, WireguardConfig, parse_wireguard_config
from pyflannel.backend.wireguard.device import WgDevice, key_pair
from pyflannel.backend.wireguard.kernel_wg import KernelWireguard
from pyflannel.backend.wireguard.keys import (
    key_file_path,
    parse_key,
    public_key,
)
from pyflannel.backend.wireguard.peers import (
    NAME,
    lease_data,
    one_device_halves,
    wanted_device,
    wireguard_peer,
    wireguard_peer6,
)
from pyflannel.backend.wireguard.uapi import UapiError
from pyflannel.backend.wireguard.userspace import WireguardGo
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)
DUAL_STACK = True  # carries IPv6 too (EnableIPv6), as upstream's

DEVICE, DEVICE6 = "flannel-wg", "flannel-wg-v6"


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "wireguard"."""
    datapath = ctx.setting("wireguard_datapath", "auto")  # auto | kernel | userspace
    backend = WireguardBackend(ctx.netlink, ctx.network, ctx.ext, datapath)
    return backend, await backend.prepare()


class WireguardBackend(Backend):
    name = NAME
    device_name = DEVICE

    def __init__(
        self, netlink: Netlink, network: NetworkConfig, ext: ExtIface, datapath: str = "auto"
    ):
        super().__init__(netlink, network, ext)
        self.config: WireguardConfig = parse_wireguard_config(network.backend)
        self.datapath = datapath
        self.mtu = overlay_mtu(NAME, self.config.mtu or ext.mtu)
        self.key_path = key_file_path()
        self._private = b""
        self.public_key = ""  # base64, as advertised
        self._psk = parse_key(self.config.psk) if self.config.psk else b""
        self.v4 = WgDevice(DEVICE, self.config.listen_port)
        self.v6: WgDevice | None = None
        # Mode auto/ipv4/ipv6 on a dual-stack network: flannel-wg carries both families, one
        # WireGuard peer per node reached over the family the mode picks
        self.one_device = network.enable_ipv6 and self.config.mode is not Mode.SEPARATE
        if network.enable_ipv6 and not self.one_device:
            self.v6 = WgDevice(DEVICE6, self.config.listen_port_v6)
        elif self.config.mode is Mode.IPV6 and not network.enable_ipv6:
            raise BackendError("wireguard Mode 'ipv6' needs EnableIPv6 (a dual-stack network)")

    @property
    def wg_devices(self) -> list[WgDevice]:
        return [self.v4] + ([self.v6] if self.v6 is not None else [])

    @property
    def plane(self) -> WireguardGo | KernelWireguard | None:
        return self.v4.plane

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 80 (WireGuard overhead)"

    def devices(self) -> Devices:
        return Devices(
            tunnel=self.v4.index,
            networks=self.owned_networks,
            tunnel6=self.v6.index
            if self.v6 is not None
            else self.v4.index
            if self.one_device
            else None,
        )

    def extra_devices(self) -> tuple[str, ...]:
        return (DEVICE6,) if self.v6 is not None else ()

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        self._private, self.public_key = await key_pair(self.key_path, "WireGuard")
        for device in self.wg_devices:
            foreign = await self.netlink.call(
                kernel.foreign_addresses, device.name, self.network.cidr
            )
            if foreign:  # never take over (and re-key) another network's device
                raise BackendError(
                    f"{device.name} already serves another network on this host (address "
                    f"{', '.join(foreign)}): one wireguard network per host (upstream's device "
                    "names are fixed)"
                )
            await device.start(self.netlink, self.datapath)
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        """Upstream's: one key for both families (BackendV6Data repeats it)."""
        data = lease_data(public_key(self._private))
        dual = self.network.enable_ipv6
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            public_ipv6=self.ext.public_ipv6 if dual else None,
            backend_type=NAME,
            backend_data=data,
            backend_v6_data=dict(data) if dual else None,
        )

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """WireGuard listens on every address: only the advertised endpoint changes."""
        async with self.kernel.lock:
            self.ext = ext
            self.mtu = overlay_mtu(NAME, self.config.mtu or ext.mtu)
            self.kernel.repair_wanted.set()
        return self.lease_attrs()

    async def configure(self, lease: Lease) -> None:
        await self._configure_devices()
        await self._sync_peers()
        if not self.kernel.desired.state.routes:  # each network through its device
            routes: dict = {self.network.cidr: Route(None, Via.TUNNEL)}
            if self.network.cidr6 is not None:
                routes[self.network.cidr6] = Route(None, Via.TUNNEL)
            await self.kernel.add_entries(KernelState(routes=routes))

    async def _configure_devices(self) -> list[str]:
        """``<subnet>.0/32`` on flannel-wg, ``<IPv6 subnet>::/128`` on flannel-wg-v6."""
        lease = self.held_lease
        assert self.v4.index is not None
        changed = await self.netlink.call(
            kernel.configure_device,
            self.v4.index,
            DEVICE,
            lease.subnet.network_address,
            self.network.cidr,
            self.mtu,
        )
        if self.network.cidr6 is not None:
            device = self.v6 or self.v4  # one device: its IPv6 address too
            assert device.index is not None
            if lease.ipv6_subnet is None:
                raise BackendError(f"the lease {lease.key} has no IPv6 subnet")
            changed += await self.netlink.call(
                kernel.configure_device,
                device.index,
                device.name,
                lease.ipv6_subnet.network_address,
                self.network.cidr6,
                self.mtu,
            )
        return changed

    async def ensure_devices(self) -> list[str]:
        repaired = []
        for device in self.wg_devices:
            repaired += await device.ensure(self.netlink)
        repaired += [f"device {c}" for c in await self._configure_devices()]
        return repaired + await self._sync_peers()

    # -- peers -----------------------------------------------------------------------------

    async def peer(self, lease: Lease) -> Peer:
        peer = wireguard_peer(lease, self.public_key, self.config.listen_port)
        for subnet, other in self.peers.items():
            if subnet != lease.subnet and other.public_key == peer.public_key:
                raise PeerDataError(
                    f"BackendData.PublicKey {peer.public_key} is also the key of {subnet} "
                    f"(at {other.public_ip}): one key, one node; not programmed"
                )

        async def half(subnet6: IPv6Network) -> Peer6:
            return wireguard_peer6(lease, subnet6, self.public_key, self.config.listen_port_v6)

        return await self.with_ipv6_half(peer, lease, half)

    def entries(self, peer: Peer) -> KernelState:
        return KernelState()  # a WireGuard peer, not a kernel entry

    async def peers_updated(self, changes: PeerChanges, before: AbstractSet[IPv4Network]) -> None:
        async with self.kernel.lock:
            await self._sync_peers()

    async def _sync_peers(self) -> list[str]:
        """Make each device's key, port and peers the wanted ones; what was changed."""
        peers = list(self.peers.values())
        if self.one_device:
            halves = one_device_halves(
                peers, self.config.mode, self.ext.public_ip, self.ext.public_ipv6
            )
            return await self._sync(self.v4, halves)
        done = await self._sync(self.v4, peers)
        if self.v6 is not None:
            done += await self._sync(self.v6, [p.v6 for p in peers if p.v6 is not None])
        return done

    async def _sync(self, device: WgDevice, halves) -> list[str]:
        wanted = wanted_device(self._private, device.port, halves, self.config.keepalive, self._psk)
        try:
            return await device.sync(wanted)
        except (UapiError, OSError) as e:
            log.warning("WireGuard device %s: %s; retrying at the next pass", device.name, e)
            self.kernel.repair_wanted.set()
            return []

    def datapath_stats(self) -> dict | None:
        return None  # WireGuard keeps its own counters (`wg show`)

    def peer_endpoints(self) -> dict[IPNetwork, PeerEndpoint]:
        peers = list(self.peers.values())
        v6 = [p.v6 for p in peers if p.v6 is not None]
        carried: list[tuple[WgDevice, list[Peer] | list[Peer6]]] = [(self.v4, peers)]
        if self.one_device:
            carried.append((self.v4, v6))  # one device: one session for both halves
        elif self.v6 is not None:
            carried.append((self.v6, v6))
        out: dict[IPNetwork, PeerEndpoint] = {}
        for device, halves in carried:
            for half in halves:
                endpoint = device.endpoint_of(half.public_key)
                if endpoint is not None:
                    out[half.subnet] = endpoint
        return out

    def datapath_problem(self) -> str | None:
        problems = [d.problem() for d in self.wg_devices]
        return "; ".join(p for p in problems if p) or None

    def status_details(self) -> dict[str, Any]:
        return {
            "port": self.config.listen_port,
            "mode": self.config.mode.value,
            "public_key": self.public_key,
            "datapath": self.plane.describe() if self.plane is not None else None,
        }

    async def close(self) -> None:
        for device in self.wg_devices:
            await device.stop()
