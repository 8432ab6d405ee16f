"""What the daemon sees of a backend: a small interface, and a typed snapshot for status and
metrics. The kernel mechanics (desired state, diff, apply, repair) are the reconciler's
(reconciler.py); a backend describes its devices, its lease attributes and what a peer needs.

A new backend is a folder under ``backend/`` with a ``start(ctx)`` and one line in
``registry.py``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any, ClassVar

from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import (
    IPAddress,
    IPNetwork,
    KernelState,
    Peer,
    Peer6,
    PeerDataError,
    Table,
    blackhole_routes,
    ipv6_half,
    peer_entries,
)
from pyflannel.backend.reconciler import Reconciler, ReconcileReport
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.watch import Damage, Watched
from pyflannel.subnet.config import NetworkConfig
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


class Backend(abc.ABC):
    """A network's data plane on this node. What a backend must say (upstream's interface
    is as small): the attributes it advertises in its lease, what a peer's lease means to it
    (``peer``: the ``Peer``, with the kernel entries it needs), its MTU, and its status
    details. Everything else has a default: no device, nothing to configure."""

    name: ClassVar[str]
    device_name: str = ""
    mtu: int = 0
    # The address of a peer's subnet the mesh prober pings through the overlay: 0 its
    # device's (<subnet>.0), 1 its CNI bridge's (a backend without a device, like host-gw).
    probe_host: int = 0
    # --ip-blackhole-route: a blackhole route for this node's own subnets (set by the daemon)
    blackhole_own: bool = False
    # False: this backend carries no traffic (alloc): peers are not probed, and traffic
    # rules are installed only when asked for explicitly
    data_plane: ClassVar[bool] = True

    def __init__(self, netlink: Netlink, network: NetworkConfig, ext: ExtIface):
        self.netlink = netlink
        self.network = network
        self.ext = ext
        self.lease: Lease | None = None
        self.kernel = Reconciler(netlink, self)
        # Route destinations this network owns: its CIDR, and the CIDR the subnet file named
        # before a config change (its leftovers are ours to remove, nobody else's).
        self.owned_networks: tuple[IPNetwork, ...] = (network.cidr,)
        if network.cidr6 is not None:
            self.owned_networks += (network.cidr6,)
        self._v6_rejected: dict[str, str] = {}  # lease key -> why its IPv6 half is not used

    def also_own(self, previous: IPNetwork | None) -> None:
        """Routes inside ``previous`` (this daemon's network before a config change, read
        from its own subnet file) are ours too: removed, as no peer wants them now."""
        if previous is not None and not any(
            previous.version == n.version and previous.overlaps(n) for n in self.owned_networks
        ):
            self.owned_networks += (previous,)

    # -- what every backend says -----------------------------------------------------------

    @abc.abstractmethod
    def lease_attrs(self) -> LeaseAttrs:
        """The attributes to advertise in this node's lease."""

    @abc.abstractmethod
    async def peer(self, lease: Lease) -> Peer:
        """The peer a lease describes, with the kernel entries it needs here (its
        ``entries``); PeerDataError if this node cannot use it."""

    def status_details(self) -> dict[str, Any]:
        """What status shows of this backend besides its type, device and MTU."""
        return {}

    # -- what a backend with devices says too ----------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        """Create or adopt the devices; return the attributes to advertise in our lease."""
        return self.lease_attrs()

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """Follow a changed underlay interface/address; the attributes to advertise now."""
        async with self.kernel.lock:
            self.ext = ext
            self.kernel.repair_wanted.set()
        return self.lease_attrs()

    async def _assign(self, lease: Lease) -> None:  # noqa: B027 - nothing to configure
        """Configure the devices for our (new) subnet."""

    @property
    def mtu_reason(self) -> str:
        """How the MTU was computed, in words."""
        return ""

    # The reconciler's questions (reconciler.DesiredStateSource):

    def devices(self) -> Devices:
        """The devices entries point at, and the CIDRs the network owns."""
        return Devices(networks=self.owned_networks)

    async def ensure_devices(self) -> list[str]:
        """Recreate/reconfigure devices that changed behind our back; what was repaired."""
        return []

    def entries(self, peer: Peer) -> KernelState:
        """The kernel entries a peer needs here: what ``peer`` put in it."""
        return peer_entries(peer)

    def extra_devices(self) -> tuple[str, ...]:
        """Devices besides ``device_name`` (the IPv6 VXLAN device of a dual-stack network)."""
        return ()

    def probe_target(self, half: Peer | Peer6) -> IPAddress:
        """Where the mesh prober reaches a peer through the overlay (``probe_host``)."""
        return half.subnet.network_address + self.probe_host

    @property
    def encapsulation_port(self) -> int | None:
        """The UDP port peers' encapsulated traffic arrives on, if a peer filter can guard
        it (--vxlan-peer-filter)."""
        return None

    def encapsulating_peers(self) -> list[str]:
        """The public IPs that traffic on ``encapsulation_port`` comes from."""
        return []

    def peers_changed(self) -> None:  # noqa: B027 - an optional hook
        """Hook after the peer set changed (e.g. swap the UDP forwarding table)."""

    def datapath_stats(self) -> dict | None:
        """Packet counters of a userspace data path, if this backend runs one. Blocks while
        the workers answer: call it in a thread."""
        return None

    def datapath_problem(self) -> str | None:
        """Why a userspace data path has stopped, if it has (for liveness checks)."""
        return None

    async def close(self) -> None:  # noqa: B027 - nothing to stop by default
        """Stop packet workers; devices and kernel entries stay for the next start."""

    # -- shared ----------------------------------------------------------------------------

    async def with_ipv6_half(
        self, peer: Peer, lease: Lease, half: Callable[[IPv6Network], Awaitable[Peer6]]
    ) -> Peer:
        """On a dual-stack network, ``peer`` with its IPv6 half, which ``half`` makes from the
        lease's IPv6 subnet once that is checked (inside the network, clear of ours). A half
        that cannot be used (PeerDataError) leaves the IPv4 half programmed, said once."""
        cidr6 = self.network.cidr6
        if cidr6 is None:
            return peer
        try:
            subnet6 = ipv6_half(lease, cidr6, self.held_lease.ipv6_subnet)
            return replace(peer, v6=await half(subnet6))
        except PeerDataError as e:
            return replace(peer, v6_problem=self.ipv6_rejected(lease, str(e)))

    def ipv6_rejected(self, lease: Lease, reason: str) -> str:
        """A dual-stack peer whose IPv6 half cannot be used: its IPv4 half is programmed, the
        IPv6 one not; said once per lease and reason. Returns the reason (for the peer)."""
        if self._v6_rejected.get(lease.key) != reason:
            log.warning(
                "lease %s from %s: IPv6 part not programmed: %s (its IPv4 part is)",
                lease.key,
                lease.attrs.public_ip,
                reason,
            )
            self._v6_rejected[lease.key] = reason
        return reason

    @property
    def held_lease(self) -> Lease:
        """This node's lease (after ``assign``)."""
        assert self.lease is not None, "assign() first"
        return self.lease

    @property
    def peers(self) -> dict[IPv4Network, Peer]:
        return self.kernel.peers

    @property
    def repair_wanted(self) -> asyncio.Event:
        return self.kernel.repair_wanted

    async def assign(self, lease: Lease) -> None:
        async with self.kernel.lock:
            self.lease = lease
            await self._assign(lease)
            if self.blackhole_own:
                await self.kernel.set_own(blackhole_routes(lease.subnet, lease.ipv6_subnet))

    async def update_peers(self, changes: PeerChanges) -> None:
        await self.kernel.update_peers(changes)

    async def reconcile(self) -> ReconcileReport:
        return await self.kernel.reconcile()

    def explains(self, table: str, key: str) -> bool:
        return self.kernel.explains(table, key)

    # -- the kernel watch: what this network owns, and damage done to it -------------------

    def watched(self) -> Watched:
        devices = self.devices()
        indexes = (devices.overlay, devices.overlay6)
        return Watched(
            frozenset(n for n in (self.device_name, *self.extra_devices()) if n),
            frozenset(i for i in indexes if i),
            self.ext.index,
            devices.networks,
        )

    def damaged(self, damage: Damage) -> None:
        """A kernel notification about something of ours: reconcile, unless we did it."""
        table, key, what = damage
        if table in tuple(Table) and self.explains(table, key):
            return  # our own doing
        log.debug("kernel: %s; reconciling", what)
        self.repair_wanted.set()

    def snapshot(self) -> BackendSnapshot:
        return BackendSnapshot(
            type=self.name,
            device=self.device_name,
            mtu=self.mtu,
            mtu_reason=self.mtu_reason,
            peers=tuple(self.peers.values()),
            rejected=tuple(self.kernel.rejected.items()),
            repairs=self.kernel.repairs,
            passes=self.kernel.passes,
            details=self.status_details(),
            probe_host=self.probe_host,
        )
