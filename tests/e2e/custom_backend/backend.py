"""``route-only``: each peer is one plain route, ``<peer subnet> via <peer PublicIP>``, on the
external interface (host-gw's idea, written only with pyflannel's public backend interface).
Its lease says ``"BackendType": "route-only"``; it has no device, so the pod MTU is the
interface's and the mesh prober reaches a peer's CNI bridge (<subnet>.1)."""

from __future__ import annotations

from pyflannel.backend.base import Backend
from pyflannel.backend.plan import Peer, PeerDataError, public_ip_of, underlay_route
from pyflannel.backend.registry import BackendContext
from pyflannel.subnet.lease import Lease, LeaseAttrs

NAME = "route-only"


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    backend = RouteOnlyBackend(ctx.netlink, ctx.network, ctx.ext)
    return backend, await backend.prepare()


class RouteOnlyBackend(Backend):
    name = NAME
    probe_host = 1  # no device: probe the peer's CNI bridge

    def __init__(self, netlink, network, ext):
        super().__init__(netlink, network, ext)
        self.mtu = ext.mtu

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.ext.public_ip, backend_type=NAME)

    async def peer(self, lease: Lease) -> Peer:
        if lease.attrs.backend_type != NAME:
            raise PeerDataError(f"backend type is {lease.attrs.backend_type!r}, not {NAME}")
        ip = public_ip_of(lease)
        return Peer(lease.subnet, ip, "route", entries=underlay_route(lease.subnet, ip))

    def status_details(self) -> dict:
        return {"routes_via": self.ext.name}
