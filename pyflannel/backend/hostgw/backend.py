"""host-gw (upstream pkg/backend/hostgw): for each peer a route ``<peer subnet> via <peer
PublicIP>`` (and on a dual-stack network ``<peer IPv6 subnet> via <peer PublicIPv6>``); no device
and no encapsulation, so the pod MTU is the interface's, and every node
must be on one L2 segment. A peer whose PublicIP this node does not reach directly (it needs a
gateway, or another interface) is not programmed: such a route would send pod traffic to a
router that knows nothing of pods. It is logged once and shown in ``pyflannel status`` with
the reason; the peer is taken as soon as a new lease of it is usable.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Network

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import (
    Peer,
    Peer6,
    PeerDataError,
    public_ip_of,
    public_ipv6_of,
    underlay_route,
)
from pyflannel.backend.registry import BackendContext
from pyflannel.kernel.iface import ExtIface
from pyflannel.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger(__name__)
NAME = "host-gw"  # the backend type, in leases and the network config
ENCAP = "direct"  # a peer reached by a plain route via its public IP
DUAL_STACK = True  # carries IPv6 too (EnableIPv6), as upstream's


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "host-gw"."""
    backend = HostGwBackend(ctx.netlink, ctx.network, ctx.ext)
    return backend, await backend.prepare()


class HostGwBackend(Backend):
    name = NAME
    device_name = ""  # none: routes point at the peers over the external interface
    probe_host = 1  # no device to ping: the peer's CNI bridge (<subnet>.1)

    def __init__(self, netlink, network, ext: ExtIface):
        super().__init__(netlink, network, ext)
        self.mtu = overlay_mtu(NAME, ext.mtu)

    @property
    def mtu_reason(self) -> str:
        return f"{self.ext.mtu} ({self.ext.name} MTU): host-gw does not encapsulate"

    async def prepare(self) -> LeaseAttrs:
        log.info("host-gw: routes to peers via their public IPs on %s", self.ext.name)
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        public_ipv6 = self.ext.public_ipv6 if self.network.enable_ipv6 else None
        return LeaseAttrs(public_ip=self.ext.public_ip, public_ipv6=public_ipv6, backend_type=NAME)

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        async with self.kernel.lock:
            self.ext = ext
            self.mtu = overlay_mtu(NAME, ext.mtu)
            self.kernel.repair_wanted.set()
        return self.lease_attrs()

    async def configure(self, lease: Lease) -> None:
        """Nothing to configure: the node's own subnet is the CNI bridge's."""

    def devices(self) -> Devices:
        return Devices(networks=self.owned_networks)

    async def ensure_devices(self) -> list[str]:
        return []

    async def peer(self, lease: Lease) -> Peer:
        if lease.attrs.backend_type != NAME:
            raise PeerDataError(
                f"backend type is {lease.attrs.backend_type or 'udp'!r}, not host-gw"
            )
        ip = public_ip_of(lease)
        if not await self.netlink.call(kernel.directly_reachable, ip, self.ext.index):
            raise PeerDataError(
                f"PublicIP {ip} is not directly reachable on {self.ext.name} (not on this "
                "node's L2 segment): host-gw needs every node on one link; not programmed "
                "(use vxlan, or vxlan with DirectRouting, across segments)"
            )

        async def half(subnet6: IPv6Network) -> Peer6:
            ip6 = public_ipv6_of(lease)
            if not await self.netlink.call(kernel.directly_reachable, ip6, self.ext.v6_index):
                raise PeerDataError(
                    f"PublicIPv6 {ip6} is not directly reachable on "
                    f"{self.ext.name6 or self.ext.name}"
                )
            return Peer6(subnet6, ip6, ENCAP, entries=underlay_route(subnet6, ip6))

        peer = Peer(lease.subnet, ip, ENCAP, entries=underlay_route(lease.subnet, ip))
        return await self.with_ipv6_half(peer, lease, half)
