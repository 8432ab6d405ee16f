"""Fixing the MTU of each peer's path that is smaller than the pod MTU (path_mtu.py says how
and when): after every prober round, a path newly named an MTU black hole is measured and
fixed, a fixed path that carried the full size long enough is restored, a fixed path that no
longer carries its fixed size is measured again. A fix is the peer's route's MTU (the data
plane) and an MSS clamp for its subnet (the traffic rules): both or, if the rules fail, the
route alone, said in the log. One log line per change."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

from pyflannel.errors import FlannelError
from pyflannel.ops.mesh.health import DECIDE, PeerHealth
from pyflannel.ops.mesh.path_mtu import (
    Damping,
    PathFix,
    describe,
    full_size_round,
    mss_for,
    next_hold,
)
from pyflannel.ops.mesh.prober import Half, MeshProber
from pyflannel.ops.snapshot import ProbeView

log = logging.getLogger(__name__)

Subnet = IPv4Network | IPv6Network


class PathMtuFixer:
    def __init__(
        self,
        prober: MeshProber,
        route_mtu: Callable[[Subnet, int | None], Awaitable[None]],
        clamps: Callable[[dict[Subnet, int]], Awaitable[None]],
        pod_mtu: Callable[[], int],
    ):
        """``route_mtu``: a peer's route carries an MTU (None: its device's again);
        ``clamps``: the MSS clamps wanted now, by peer subnet."""
        self.prober = prober
        self.route_mtu = route_mtu
        self.clamps = clamps
        self.pod_mtu = pod_mtu
        self.fixes: dict[Subnet, PathFix] = {}
        self.damping: dict[Subnet, Damping] = {}
        self.probes = 0  # spent measuring, in all
        self._misses: dict[Subnet, int] = {}  # rounds in a row a fixed size was lost
        self._clamps_stale = False  # the rules refused the last clamps: set them again

    async def after_round(self) -> None:
        halves: dict[Subnet, Half] = {
            h.subnet: h for p in self.prober.peers() for h in (p, p.v6) if h is not None
        }
        now, pod_mtu, changed = time.time(), self.pod_mtu(), False
        for subnet in list(self.fixes):
            if subnet not in halves:
                await self._undo(subnet, "left (the peer is gone)")
                changed = True
            elif self.fixes[subnet].mtu >= pod_mtu:  # the pod MTU itself went down
                await self._undo(subnet, f"needs no fix at the pod MTU {pod_mtu} now")
                changed = True
        for subnet, record in list(self.prober.records.items()):
            half = halves.get(subnet)
            if half is None or not record.full:
                continue
            fix = self.fixes.get(subnet)
            if fix is None:
                if record.state is PeerHealth.BLACK_HOLE:
                    changed |= await self._measure(half, pod_mtu, now)
                continue
            if full_size_round(fix, record.full[-1] is not None, now):
                await self._undo(subnet, f"carries the full {pod_mtu} bytes again")
                changed = True
            elif await self.prober.passes(half, fix.mtu):
                self._misses.pop(subnet, None)
            elif self._misses.setdefault(subnet, 0) + 1 >= DECIDE:
                log.warning(
                    "path to %s no longer carries %d bytes; measuring again", subnet, fix.mtu
                )
                await self._undo(subnet, "")
                changed |= await self._measure(half, pod_mtu, now)
            else:
                self._misses[subnet] += 1
        if changed or self._clamps_stale:
            await self._apply_clamps()

    async def _measure(self, half: Half, pod_mtu: int, now: float) -> bool:
        found = await self.prober.largest(half, pod_mtu)
        if found is None:
            return False  # not even small probes answer now: nothing to fix by size
        mtu, probes, seconds = found
        self.probes += probes
        if mtu >= pod_mtu:
            return False  # it passed in the end: lost probes, not a small path
        damping = self.damping.setdefault(half.subnet, Damping())
        damping.hold = next_hold(damping, now)
        self.fixes[half.subnet] = PathFix(mtu, now, probes, hold=damping.hold)
        await self.route_mtu(half.subnet, mtu)
        log.warning(
            "%s (measured with %d probes in %.1f s)",
            describe(str(half.subnet), mtu, pod_mtu, half.subnet.version),
            probes,
            seconds,
        )
        return True

    async def _undo(self, subnet: Subnet, why: str) -> None:
        fix = self.fixes.pop(subnet)
        self._misses.pop(subnet, None)
        self.damping.setdefault(subnet, Damping()).returned = time.time()
        await self.route_mtu(subnet, None)
        if why:
            log.info(
                "path to %s %s: its route MTU and MSS clamp (%d) removed",
                subnet,
                why,
                fix.mtu,
            )

    async def _apply_clamps(self) -> None:
        clamps = {s: mss_for(f.mtu, s.version) for s, f in self.fixes.items()}
        try:
            await self.clamps(clamps)
            self._clamps_stale = False
        except FlannelError as e:  # the rules' tool failed: the routes still carry the fix
            if not self._clamps_stale:
                log.warning("MSS clamps not set (%s): the routes' MTU stays; retrying", e)
            self._clamps_stale = True

    def annotate(self, views: dict[str, ProbeView]) -> dict[str, ProbeView]:
        """The prober's views, each fixed path's with its MTU, since when and its probes."""
        fixes = {str(s): f for s, f in self.fixes.items()}
        return {
            subnet: replace(
                view, path_mtu=fix.mtu, path_mtu_since=fix.since, path_mtu_probes=fix.probes
            )
            if (fix := fixes.get(subnet)) is not None
            else view
            for subnet, view in views.items()
        }
