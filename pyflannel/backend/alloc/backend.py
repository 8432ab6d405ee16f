"""alloc (upstream pkg/backend/alloc): subnets allocated and kept, no data plane. For operators
who route pod traffic themselves: the node leases a subnet, renews it, writes subnet.env (MTU:
the interface's), and puts nothing in the kernel: no device, no route, no neighbour, and no
iptables rule unless asked for (--ip-masq, or --iptables-forward-rules given explicitly).

Its lease is upstream's byte for byte: ``{"PublicIP":"…","PublicIPv6":null}``, no BackendType.
Peers' leases are listed (status shows them) and never programmed or probed.
"""

from __future__ import annotations

import logging

from pyflannel.backend.base import Backend
from pyflannel.backend.plan import Peer, public_ip_of
from pyflannel.backend.registry import BackendContext
from pyflannel.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger(__name__)
NAME = "alloc"
DUAL_STACK = True  # any network: upstream allocates an IPv6 subnet too on a dual-stack one


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "alloc"."""
    backend = AllocBackend(ctx.netlink, ctx.network, ctx.ext)
    log.info("alloc: subnets are allocated and kept; this node programs no data plane")
    return backend, backend.lease_attrs()


class AllocBackend(Backend):
    name = NAME
    data_plane = False

    def __init__(self, netlink, network, ext):
        super().__init__(netlink, network, ext)
        self.mtu = ext.mtu

    @property
    def mtu_reason(self) -> str:
        return f"{self.ext.mtu} ({self.ext.name} MTU): alloc does not carry traffic"

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.ext.public_ip)  # upstream's: PublicIP only

    async def peer(self, lease: Lease) -> Peer:
        """Known, never programmed: no entries."""
        return Peer(lease.subnet, public_ip_of(lease), "none")
