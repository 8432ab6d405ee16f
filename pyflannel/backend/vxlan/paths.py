"""A VXLAN network's second path per peer: what the path healer (ops/mesh/healer.py) asks to
move a peer VXLAN does not reach onto the UDP path, and back. A moved peer's route goes into
``flannel0``; its neighbour and FDB entries stay, so VXLAN is still probed through them."""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from pyflannel.backend.plan import KernelState, Peer, overlay_entries, tunnel_route
from pyflannel.backend.reconciler import Reconciler
from pyflannel.backend.udp import peer as udp
from pyflannel.backend.vxlan.devices import VxlanDevices
from pyflannel.backend.vxlan.peer import ENCAP_VXLAN
from pyflannel.backend.vxlan.udp_side import UdpSide
from pyflannel.errors import BackendError
from pyflannel.subnet.lease import Lease

log = logging.getLogger(__name__)


class Vxlan(Protocol):
    """What the paths read of their VXLAN backend (backend.py's VxlanBackend)."""

    mtu: int
    udp: UdpSide | None
    vteps: VxlanDevices
    kernel: Reconciler

    @property
    def peers(self) -> dict[IPv4Network, Peer]: ...

    @property
    def held_lease(self) -> Lease: ...


class VxlanPaths:
    """``base.AlternatePaths`` for a VXLAN backend."""

    def __init__(self, backend: Vxlan):
        self.backend = backend
        self.via_udp: set[IPv4Network] = set()  # VXLAN peers moved to UDP

    def why_not_healing(self) -> str | None:
        b = self.backend
        if b.udp is None:
            return (
                "this node does not accept UDP encapsulation (a dual-stack network, "
                "--backend-fallback=off, or flannel0 is another network's)"
            )
        if b.udp.mtu < b.mtu:
            return (
                f"the UDP path carries {b.udp.mtu} bytes, less than the pod MTU {b.mtu} "
                "(Backend.MTU above the interface's): full-size packets would not fit"
            )
        return None

    def heal_candidates(self) -> list[Peer]:
        if self.backend.udp is None:
            return []
        return [
            p
            for p in self.backend.peers.values()
            if p.udp_port and (p.encap == ENCAP_VXLAN or p.subnet in self.via_udp)
        ]

    def unhealable(self) -> list[Peer]:
        return [p for p in self.backend.peers.values() if p.encap == ENCAP_VXLAN and not p.udp_port]

    def overlay_index(self) -> int | None:
        device = self.backend.vteps.device
        return device.index if device else None

    async def udp_index(self) -> int | None:
        side = self.backend.udp
        if side is None:
            return None
        try:
            await side.start("probing the UDP path of a peer VXLAN does not reach")
        except BackendError as e:
            log.warning("path healing: %s", e)
            return None
        return side.index

    def own_address(self) -> IPv4Address:
        return self.backend.held_lease.subnet.network_address

    def moved(self, peer: Peer) -> Peer:
        """``peer`` as the healer has it: over UDP if it was moved."""
        if peer.subnet in self.via_udp:
            return replace(peer, encap=udp.ENCAP_UDP, entries=over_udp(peer))
        return peer

    async def reroute(self, subnet: IPv4Network, via_udp: bool) -> None:
        """Route a VXLAN peer into the UDP path, or back onlink via the VXLAN device."""
        if via_udp:
            self.via_udp.add(subnet)
        else:
            self.via_udp.discard(subnet)
        peer = self.backend.peers.get(subnet)
        if peer is None or not peer.vtep_mac:
            return
        if via_udp:
            moved = replace(peer, encap=udp.ENCAP_UDP, entries=over_udp(peer))
        else:
            moved = replace(peer, encap=ENCAP_VXLAN, entries=vxlan_entries(peer))
        await self.backend.kernel.replace_peer(moved)


def vxlan_entries(peer: Peer) -> KernelState:
    """A VXLAN peer's neighbour, FDB entry and onlink route."""
    return overlay_entries(peer.subnet, peer.vtep_mac, peer.public_ip)


def over_udp(peer: Peer) -> KernelState:
    """A VXLAN peer moved to UDP: its route into flannel0; its neighbour and FDB entry stay
    (the healer keeps probing VXLAN through them)."""
    entries = vxlan_entries(peer)
    entries.routes = tunnel_route(peer.subnet).routes
    return entries
