"""A network's backend at work: what the backend says (base.Backend), what its reconciler
keeps in the kernel (reconciler.py), what the kernel watch sees of them, and the snapshot
status and metrics read. The daemon and its control loops hold a ``DataPlane``, never the
backend's internals; a backend stays a description.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from pyflannel.backend.base import (
    AlternatePaths,
    Backend,
    HasAlternatePaths,
    PeerEndpoint,
    PeerFilterSource,
    ReportsPeerEndpoints,
    UserspaceDatapath,
)
from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import IPAddress, IPNetwork, Peer, Peer6, Table, blackhole_routes
from pyflannel.backend.reconciler import ReconcileReport
from pyflannel.backend.sites.link import SiteLink
from pyflannel.backend.sites.placement import PlacementView
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.watch import Damage, Watched
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSnapshot:
    """A backend's state as ``/status`` and ``/metrics`` show it (no live objects)."""

    type: str
    device: str
    mtu: int
    mtu_reason: str
    # The backend's own facts for status, by name (vxlan: port, vni, vtep_mac; wireguard:
    # public_key, datapath; a UDP fallback: fallback, the reason).
    details: dict[str, Any] = field(default_factory=dict)
    probe_host: int = 0  # which address of a peer's subnet the prober reaches (see Backend)
    peers: tuple[Peer, ...] = ()
    rejected: tuple[tuple[IPv4Network, str], ...] = ()
    repairs: int = 0
    passes: int = 0  # full reconciles done
    endpoints: dict[str, PeerEndpoint] = field(default_factory=dict)  # by peer subnet (WireGuard)
    site: dict[str, Any] = field(default_factory=dict)  # --site: its facts (SiteLink.details)
    # by peer subnet: where it is and how it is reached (--site)
    placements: dict[str, PlacementView] = field(default_factory=dict)
    # the routes whose path MTU is fixed (ops/mesh/mtu_fixer.py), by subnet
    path_mtu: dict[IPNetwork, int] = field(default_factory=dict)


class DataPlane:
    def __init__(
        self, backend: Backend, blackhole_own: bool = False, sites: SiteLink | None = None
    ):
        self.backend = backend
        self.kernel = backend.kernel
        # --ip-blackhole-route: a blackhole route for this node's own subnets
        self.blackhole_own = blackhole_own
        # --site: peers placed by site, those of other sites through the site link
        self.sites = sites
        backend.sites = sites

    # -- what the backend is -----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def device_name(self) -> str:
        return self.backend.device_name

    @property
    def mtu(self) -> int:
        """The pod MTU: the backend's, and no more than the site link carries."""
        sites = self.sites
        if sites is not None and sites.device is not None:
            return min(self.backend.mtu, sites.mtu)
        return self.backend.mtu

    @property
    def mtu_reason(self) -> str:
        sites = self.sites
        if sites is None or sites.device is None or sites.mtu >= self.backend.mtu:
            return self.backend.mtu_reason
        return (
            f"{sites.ext.mtu} ({sites.ext.name} MTU) - 80 (the site link's WireGuard overhead), "
            f"below the backend's {self.backend.mtu}"
        )

    @property
    def carries_traffic(self) -> bool:
        return self.backend.data_plane

    def devices(self) -> Devices:
        return self.backend.all_devices()

    def also_own(self, previous: IPNetwork | None) -> None:
        self.backend.also_own(previous)

    def probe_target(self, half: Peer | Peer6) -> IPAddress:
        """Where the mesh prober reaches a peer through the overlay (``probe_host``)."""
        return half.subnet.network_address + self.backend.probe_host

    # -- its capabilities ------------------------------------------------------------------

    @property
    def encapsulation_port(self) -> int | None:
        b = self.backend
        return b.encapsulation_port if isinstance(b, PeerFilterSource) else None

    def encapsulating_peers(self) -> list[str]:
        b = self.backend
        return b.encapsulating_peers() if isinstance(b, PeerFilterSource) else []

    def datapath_stats(self) -> dict | None:
        """Blocks while a userspace data path's workers answer: call it in a thread."""
        b = self.backend
        return b.datapath_stats() if isinstance(b, UserspaceDatapath) else None

    def datapath_problem(self) -> str | None:
        b = self.backend
        problem = b.datapath_problem() if isinstance(b, UserspaceDatapath) else None
        return problem or (self.sites.problem() if self.sites is not None else None)

    @property
    def alternate_paths(self) -> AlternatePaths | None:
        b = self.backend
        return b.paths if isinstance(b, HasAlternatePaths) else None

    # -- driving it ------------------------------------------------------------------------

    @property
    def peers(self) -> dict[IPv4Network, Peer]:
        return self.kernel.peers

    @property
    def repair_wanted(self) -> asyncio.Event:
        return self.kernel.repair_wanted

    async def assign(self, lease: Lease) -> None:
        """This node's (new) lease: the devices configured for it, its blackhole routes."""
        async with self.kernel.lock:
            self.backend.lease = lease
            await self.backend.configure(lease)
            if self.sites is not None:
                await self.sites.configure(lease)
            if self.blackhole_own:
                await self.kernel.set_own(blackhole_routes(lease.subnet, lease.ipv6_subnet))

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        if self.sites is not None:  # its inside address, outside address and MTU follow
            self.sites.ext = ext
        return await self.backend.move_underlay(ext)

    async def update_peers(self, changes: PeerChanges) -> None:
        before = frozenset(self.kernel.peers)
        await self.kernel.update_peers(changes)
        if self.sites is not None:
            for lease in changes.removed:
                self.sites.forget(lease.subnet)
            async with self.kernel.lock:
                await self.sites.sync()
        await self.backend.peers_updated(changes, before)

    async def set_path_mtu(self, subnet: IPNetwork, mtu: int | None) -> None:
        """A peer's path MTU fixed (ops/mesh/mtu_fixer.py), or no longer (None)."""
        await self.kernel.set_path_mtu(subnet, mtu)

    async def site_records(self, stored: Mapping[str, bytes]) -> None:
        """The node records as stored now: the peers whose record changed placed again."""
        if self.sites is None:
            return
        changed = self.sites.update_records(stored)
        leases = [self.sites.leases[s] for s in changed if s in self.sites.leases]
        if leases:
            await self.update_peers(PeerChanges(added=leases))

    async def site_pass(self) -> None:
        """Between reconciles (every few seconds): the site link's sessions read, peers
        relayed or direct again (sites/relay.py)."""
        if self.sites is not None:
            async with self.kernel.lock:
                await self.sites.refresh()

    async def reconcile(self) -> ReconcileReport:
        repaired: list[str] = []
        if self.sites is not None:
            async with self.kernel.lock:  # the device first: routes go into it
                repaired += await self.sites.ensure()
        report = await self.kernel.reconcile()
        if self.sites is not None:
            async with self.kernel.lock:
                repaired += await self.sites.sync()
        report.repaired[:0] = repaired
        return report

    async def close(self) -> None:
        await self.backend.close()
        if self.sites is not None:
            await self.sites.close()

    # -- the kernel watch: what this network owns, and damage done to it -------------------

    def watched(self) -> Watched:
        devices = self.backend.devices()
        indexes = (devices.overlay, devices.overlay6)
        names = (self.backend.device_name, *self.backend.extra_devices())
        if self.sites is not None and self.sites.device is not None:
            names += (self.sites.device.name,)
        return Watched(
            frozenset(n for n in names if n),
            frozenset(i for i in indexes if i),
            self.backend.ext.index,
            devices.networks,
        )

    def damaged(self, damage: Damage) -> None:
        """A kernel notification about something of ours: reconcile, unless we did it."""
        table, key, what = damage
        if table in tuple(Table) and self.kernel.explains(table, key):
            return  # our own doing
        log.debug("kernel: %s; reconciling", what)
        self.kernel.repair_wanted.set()

    # -- status ----------------------------------------------------------------------------

    def snapshot(self) -> BackendSnapshot:
        b = self.backend
        return BackendSnapshot(
            type=b.name,
            device=b.device_name,
            mtu=self.mtu,
            mtu_reason=self.mtu_reason,
            peers=tuple(self.kernel.peers.values()),
            rejected=tuple(self.kernel.rejected.items()),
            repairs=self.kernel.repairs,
            passes=self.kernel.passes,
            details=b.status_details(),
            probe_host=b.probe_host,
            endpoints=self._endpoints(),
            site=self.sites.details() if self.sites is not None else {},
            placements=self._placements(),
            path_mtu=dict(self.kernel.path_mtu),
        )

    def _placements(self) -> dict[str, PlacementView]:
        sites = self.sites
        if sites is None:
            return {}
        views = ((subnet, sites.view(subnet)) for subnet in self.kernel.peers)
        return {str(subnet): view for subnet, view in views if view is not None}

    def _endpoints(self) -> dict[str, PeerEndpoint]:
        b = self.backend
        endpoints = dict(b.peer_endpoints()) if isinstance(b, ReportsPeerEndpoints) else {}
        if self.sites is not None:
            endpoints.update(self.sites.endpoints().items())
        return {str(subnet): endpoint for subnet, endpoint in endpoints.items()}
