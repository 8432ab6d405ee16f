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
from dataclasses import dataclass, replace
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
    ipv6_half,
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
    port: int | None = None  # the VXLAN port, or the UDP backend's
    vni: int | None = None
    vtep_mac: str | None = None
    device6: str | None = None  # dual-stack vxlan: flannel-v6.<VNI>
    vtep_mac6: str | None = None
    public_key: str | None = None  # wireguard: this node's, as advertised
    datapath: str | None = None  # wireguard: kernel, or userspace wireguard-go
    fallback: str | None = None  # why this node runs UDP although the network is vxlan
    peers: tuple[Peer, ...] = ()
    rejected: tuple[tuple[IPv4Network, str], ...] = ()
    repairs: int = 0
    passes: int = 0  # full reconciles done


class Backend(abc.ABC):
    name: ClassVar[str]
    device_name: str = ""
    mtu: int = 0

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

    # -- what a backend supplies -----------------------------------------------------------

    @abc.abstractmethod
    async def prepare(self) -> LeaseAttrs:
        """Create or adopt the devices; return the attributes to advertise in our lease."""

    @abc.abstractmethod
    def lease_attrs(self) -> LeaseAttrs:
        """The attributes to advertise, from the current devices."""

    @abc.abstractmethod
    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """Follow a changed underlay interface/address; the attributes to advertise now."""

    @abc.abstractmethod
    async def _assign(self, lease: Lease) -> None:
        """Configure the devices for our (new) subnet."""

    @property
    @abc.abstractmethod
    def mtu_reason(self) -> str:
        """How the MTU was computed, in words."""

    @abc.abstractmethod
    def _snapshot_details(self) -> dict[str, Any]:
        """Backend-specific fields of the snapshot (port, vni, vtep_mac, fallback)."""

    # The reconciler's questions (reconciler.DesiredStateSource):

    @abc.abstractmethod
    def devices(self) -> Devices: ...

    @abc.abstractmethod
    async def ensure_devices(self) -> list[str]: ...

    @abc.abstractmethod
    async def peer(self, lease: Lease) -> Peer: ...

    @abc.abstractmethod
    def entries(self, peer: Peer) -> KernelState: ...

    def extra_devices(self) -> tuple[str, ...]:
        """Devices besides ``device_name`` (the IPv6 VXLAN device of a dual-stack network)."""
        return ()

    def probe_target(self, half: Peer | Peer6) -> IPAddress:
        """Where the mesh prober reaches a peer through the overlay: its device's address
        (<subnet>.0, or the IPv6 subnet's first address)."""
        return half.subnet.network_address

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

    async def update_peers(self, changes: PeerChanges) -> None:
        await self.kernel.update_peers(changes)

    async def reconcile(self) -> ReconcileReport:
        return await self.kernel.reconcile()

    def explains(self, table: str, key: str) -> bool:
        return self.kernel.explains(table, key)

    # -- the kernel watch: what this network owns, and damage done to it -------------------

    def watched(self) -> Watched:
        devices = self.devices()
        indexes = (devices.vxlan, devices.vxlan6)
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
            **self._snapshot_details(),
        )
