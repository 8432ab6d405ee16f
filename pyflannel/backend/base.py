"""What a backend is: a small interface (its lease attributes, what a peer's lease means, its
MTU, its devices and status details), and the capabilities a backend may have besides, each
behind a protocol of its own. The kernel mechanics (desired state, diff, apply, repair) are the
reconciler's (reconciler.py); the daemon drives a backend and its reconciler together through
``dataplane.DataPlane``, which also answers the kernel watch and status.

A new backend is a folder under ``backend/`` with a ``start(ctx)`` and one line in
``registry.py``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any, ClassVar, Protocol, runtime_checkable

from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import (
    IPNetwork,
    KernelState,
    Peer,
    Peer6,
    PeerDataError,
    ipv6_half,
    peer_entries,
)
from pyflannel.backend.reconciler import Reconciler
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """A network's data plane on this node. What a backend must say (upstream's interface
    is as small): the attributes it advertises in its lease, what a peer's lease means to it
    (``peer``: the ``Peer``, with the kernel entries it needs), its MTU, and its status
    details. Everything else has a default: no device, nothing to configure. What a backend
    may offer besides is a capability of its own (``PeerFilterSource``, ``UserspaceDatapath``,
    ``HasAlternatePaths`` below). The kernel entries are its reconciler's (``self.kernel``);
    the daemon drives both through ``dataplane.DataPlane``."""

    name: ClassVar[str]
    device_name: str = ""
    mtu: int = 0
    # The address of a peer's subnet the mesh prober pings through the overlay: 0 its
    # device's (<subnet>.0), 1 its CNI bridge's (a backend without a device, like host-gw).
    probe_host: int = 0
    # False: this backend carries no traffic (alloc): peers are not probed, and traffic
    # rules are installed only when asked for explicitly
    data_plane: ClassVar[bool] = True

    def __init__(self, netlink: Netlink, network: NetworkConfig, ext: ExtIface):
        self.netlink = netlink
        self.network = network
        self.ext = ext
        self.lease: Lease | None = None  # this node's, set before ``configure``
        # --site: where each peer is decides how it is reached (backend/sites/link.py)
        self.sites: PeerPlacement | None = None
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

    @property
    def mtu_reason(self) -> str:
        """How the MTU was computed, in words."""
        return ""

    # -- what the reconciler asks: the backend's answers, placed by site ---------------------

    async def placed_peer(self, lease: Lease) -> Peer:
        """The peer of ``lease`` as this node reaches it: by this backend (``peer``), or, with
        --site, as its site decides (over its inside address, or through the site link)."""
        if self.sites is None:
            return await self.peer(lease)
        return await self.sites.place(lease, self.peer)

    def all_devices(self) -> Devices:
        """``devices()``, with the site link's device where there is one."""
        devices = self.devices()
        site = self.sites.index if self.sites is not None else None
        return devices if site is None else replace(devices, site=site)

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

    async def configure(self, lease: Lease) -> None:  # noqa: B027 - nothing to configure
        """Configure the devices for our (new) subnet (``self.lease`` is set)."""

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

    def peers_changed(self) -> None:  # noqa: B027 - an optional hook
        """Hook after the peer set changed (e.g. swap the UDP forwarding table)."""

    async def peers_updated(  # noqa: B027 - an optional hook
        self, changes: PeerChanges, before: AbstractSet[IPv4Network]
    ) -> None:
        """After the reconciler took ``changes`` (``before``: the peers programmed until
        then): for peers that are more than kernel entries (WireGuard's, an extension's
        commands)."""

    def extra_devices(self) -> tuple[str, ...]:
        """Devices besides ``device_name`` (the IPv6 VXLAN device of a dual-stack network)."""
        return ()

    async def close(self) -> None:  # noqa: B027 - nothing to stop by default
        """Stop packet workers; devices and kernel entries stay for the next start."""

    # -- shared ----------------------------------------------------------------------------

    @property
    def peers(self) -> dict[IPv4Network, Peer]:
        """The peers programmed (the reconciler's)."""
        return self.kernel.peers

    @property
    def held_lease(self) -> Lease:
        """This node's lease (after ``configure``)."""
        assert self.lease is not None, "assign() first"
        return self.lease

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


# -- capabilities a backend may have ------------------------------------------------------------


class PeerPlacement(Protocol):
    """Where each peer is (its site), deciding how it is reached (backend/sites/link.py)."""

    @property
    def index(self) -> int | None:
        """The site link device's index (None: none)."""
        ...

    async def place(self, lease: Lease, backend_peer: Callable[[Lease], Awaitable[Peer]]) -> Peer:
        """The peer of ``lease``, placed (``backend_peer``: the backend's own view)."""
        ...


@runtime_checkable
class PeerFilterSource(Protocol):
    """A backend whose peers' traffic arrives on one UDP port (VXLAN's), so that
    --vxlan-peer-filter can accept it from the peers only."""

    @property
    def encapsulation_port(self) -> int | None:
        """The UDP port peers' encapsulated traffic arrives on."""
        ...

    def encapsulating_peers(self) -> list[str]:
        """The public IPs that traffic on that port comes from."""
        ...


@runtime_checkable
class UserspaceDatapath(Protocol):
    """A backend that moves packets in userspace (the UDP path, wireguard-go)."""

    def datapath_stats(self) -> dict | None:
        """Its packet counters (backend/udp/pool.py ``merge``), if it runs. Blocks while the
        workers answer: call it in a thread."""
        ...

    def datapath_problem(self) -> str | None:
        """Why it has stopped, if it has (for liveness checks)."""
        ...


@dataclass(frozen=True)
class PeerEndpoint:
    """Where a peer is sent to, as its device has it: the endpoint in use, the one its lease
    publishes (they differ when the device learned another one from the peer's own packets:
    a peer behind NAT), and its last handshake (seconds since the epoch, 0: never)."""

    endpoint: str
    published: str
    last_handshake: int = 0

    @property
    def learned(self) -> bool:
        return bool(self.endpoint) and self.endpoint != self.published


@runtime_checkable
class ReportsPeerEndpoints(Protocol):
    """A backend whose peers are sessions with endpoints (WireGuard)."""

    def peer_endpoints(self) -> dict[IPNetwork, PeerEndpoint]:
        """By peer subnet (each family's), as the devices reported at the last reconcile."""
        ...


@runtime_checkable
class AlternatePaths(Protocol):
    """A second encapsulation per peer (VXLAN's UDP path): what the path healer
    (ops/mesh/healer.py) asks to move a peer VXLAN does not reach."""

    def why_not_healing(self) -> str | None:
        """Why peers cannot be moved to UDP on this node (None: they can)."""
        ...

    def heal_candidates(self) -> list[Peer]:
        """Peers reachable over both encapsulations (their leases offer a UDP port)."""
        ...

    def unhealable(self) -> list[Peer]:
        """Peers sent over VXLAN that offer no UDP port."""
        ...

    def overlay_index(self) -> int | None:
        """The VXLAN device's index."""
        ...

    async def udp_index(self) -> int | None:
        """The UDP path's TUN index, starting the path if it is not running."""
        ...

    def own_address(self) -> IPv4Address:
        """This node's address on the overlay (its subnet's network address)."""
        ...

    async def reroute(self, subnet: IPv4Network, via_udp: bool) -> None:
        """Send the peer of ``subnet`` over UDP, or back over VXLAN (its route only)."""
        ...


@runtime_checkable
class HasAlternatePaths(Protocol):
    """A backend whose ``paths`` answer the path healer (VXLAN's: vxlan/paths.py)."""

    paths: AlternatePaths
