"""Per-path healing: a peer that VXLAN no longer reaches, but pyflannel's UDP encapsulation
does, is sent over UDP until VXLAN works again (the rule: path_choice.py).

Every round (the mesh prober's interval) each peer whose lease offers a UDP port is probed
out of the VXLAN device, and out of the UDP path's TUN when VXLAN keeps failing or the peer is
on UDP (path_probe.py; the UDP path starts then if it is not running). A peer whose host does
not answer an echo on the underlay is not moved: UDP would not reach it either. A move changes only that peer's route (into ``flannel0`` and back); its
neighbour and FDB entries stay, so VXLAN keeps being probed. The pod MTU does not change:
the UDP path carries 22 bytes more than VXLAN does. A peer that offers no UDP port (upstream
flanneld) is left as it is; when its path is broken, the healer says once that it cannot help.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Network

from pyflannel.backend.base import AlternatePaths
from pyflannel.backend.plan import Peer
from pyflannel.ops.mesh.health import PeerHealth
from pyflannel.ops.mesh.path_choice import Encap, Move, PathChoice, PathResult
from pyflannel.ops.mesh.path_probe import PathProber
from pyflannel.ops.snapshot import HealView, ProbeView

log = logging.getLogger(__name__)

BROKEN = (PeerHealth.UNREACHABLE, PeerHealth.TCP_BROKEN, PeerHealth.BLACK_HOLE)
NO_UDP = (
    "its lease offers no UDP port (upstream flanneld, or a pyflannel node that does not accept UDP)"
)


class PathHealer:
    def __init__(
        self,
        backend: AlternatePaths,
        interval: float,
        rate: float = 50.0,
        health: Callable[[], dict[str, ProbeView]] = dict,
        prober: PathProber | None = None,
    ):
        self.backend = backend
        self.interval = interval
        self.rate = rate  # probes per second at most (--probe-rate): checks are spread out
        self.health = health  # the mesh prober's view: the state of each peer's current path
        self.prober = prober or PathProber()
        self.choices: dict[IPv4Network, PathChoice] = {}
        self.rounds = 0
        self.moves = {Encap.UDP: 0, Encap.VXLAN: 0}
        self._said_unhealable: set[IPv4Network] = set()

    async def run(self) -> None:
        self.prober.open()
        try:
            while True:
                started = time.monotonic()
                await self.round()
                left = self.interval - (time.monotonic() - started)
                await asyncio.sleep(max(0.0, left) * random.uniform(0.9, 1.1))
        finally:
            self.prober.close()

    async def round(self) -> None:
        peers = self.backend.heal_candidates()
        wanted = {p.subnet for p in peers}
        for gone in set(self.choices) - wanted:  # left, or no longer offers UDP
            if self.choices.pop(gone).via is Encap.UDP:
                await self.backend.reroute(gone, False)
        checks = []
        for peer in peers:  # an echo and a SYN each; the UDP path's only when VXLAN fails
            checks.append(asyncio.create_task(self._check(peer)))
            await asyncio.sleep(2 / self.rate)
        await asyncio.gather(*checks)
        self._name_unhealable()
        self.rounds += 1

    async def _check(self, peer: Peer) -> None:
        choice = self.choices.setdefault(peer.subnet, PathChoice())
        source, target = self.backend.own_address(), peer.gateway
        vxlan_index = self.backend.overlay_index()
        if vxlan_index is None:
            return
        vxlan = await self.prober.probe(target, vxlan_index, source)
        if choice.via is Encap.VXLAN and self._kernel_tcp_broken(peer):
            # the SYN above is built here, with its checksum: a bug in the VXLAN device's
            # checksum offload (the kernel's own TCP) shows in the mesh prober's TCP probes
            vxlan = PathResult(icmp=vxlan.icmp, tcp=False)
        udp = None
        if choice.wants_udp_probe(vxlan):
            if choice.via is Encap.VXLAN and not await self.prober.echo(peer.public_ip):
                # its host is silent on the underlay too: UDP would not reach it either
                choice.observe(vxlan, None, time.time())
                return
            udp_index = await self.backend.udp_index()
            if udp_index is not None:
                udp = await self.prober.probe(target, udp_index, source)
        move = choice.observe(vxlan, udp, time.time())
        if move is None:
            return
        if move in (Move.TO_UDP, Move.TRY_UDP, Move.TO_VXLAN):
            await self.backend.reroute(peer.subnet, move is not Move.TO_VXLAN)
            self.moves[choice.via] += 1
        where = f"peer {peer.subnet} at {peer.public_ip}"
        if move is Move.TRY_UDP:
            log.info(
                "path: %s: %s and UDP does not answer yet (answers come back over the peer's "
                "own choice): trying UDP for a round",
                where,
                choice.why,
            )
        elif move in (Move.TO_UDP, Move.CONFIRMED):
            log.warning(
                "path: %s moved to UDP (port %d): %s, UDP answers; VXLAN is probed every "
                "round and the peer moves back after %d clean rounds",
                where,
                peer.udp_port,
                choice.why,
                choice.back_after,
            )
        elif udp is not None and not udp.ok and vxlan.ok:
            log.info("path: %s back on VXLAN (UDP failed, VXLAN answers)", where)
        elif vxlan.ok:
            log.info("path: %s back on VXLAN (%d clean rounds)", where, choice.back_after)
        else:
            log.info("path: %s back on VXLAN: UDP did not answer the try either", where)

    def _state(self, peer: Peer) -> str | None:
        """The mesh prober's state of the peer's current path (its route)."""
        view = self.health().get(str(peer.subnet))
        return view.state if view is not None else None

    def _kernel_tcp_broken(self, peer: Peer) -> bool:
        """Do the mesh prober's kernel TCP probes (through the peer's route) fail?"""
        return self._state(peer) == PeerHealth.TCP_BROKEN

    def _name_unhealable(self) -> None:
        for peer in self.backend.unhealable():
            state = self._state(peer)
            if state in BROKEN and peer.subnet not in self._said_unhealable:
                self._said_unhealable.add(peer.subnet)
                log.warning(
                    "path: peer %s at %s is %s and cannot be moved to UDP: %s; left as it is",
                    peer.subnet,
                    peer.public_ip,
                    state,
                    NO_UDP,
                )
            elif state not in BROKEN:
                self._said_unhealable.discard(peer.subnet)

    def view(self) -> dict[str, HealView]:
        """Per peer subnet: its encapsulation and why; peers that cannot move, and why."""

        out = {str(s): c.view() for s, c in self.choices.items()}
        for peer in self.backend.unhealable():
            out[str(peer.subnet)] = HealView(via="vxlan", cannot_heal=NO_UDP)
        return out
