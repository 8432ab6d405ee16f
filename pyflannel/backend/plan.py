"""Desired kernel state for a set of peers, and the plan that makes the kernel match it.

Pure: no netlink here. ``KernelState`` describes the tables a network owns on a node —
neighbours and FDB entries on its overlay (L2) devices, and routes carrying pyflannel's route
protocol number (onlink via an overlay device, directly via the underlay, or into a
point-to-point tunnel device) — so the same ``diff`` serves start-up, events, and repair after
someone deleted an entry. What a lease means as a peer, and which entries that peer needs, is
each backend's own business (its folder): here are only the shapes of kernel entries.

Both families share the tables: an entry's family names its device (an IPv6 neighbour, an FDB
entry towards an IPv6 endpoint, a route to an IPv6 subnet belong to the IPv6 devices).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NamedTuple

from pyflannel.subnet.lease import Lease


class Table(enum.StrEnum):
    NEIGH = "neigh"
    FDB = "fdb"
    ROUTE = "route"


class Action(enum.StrEnum):
    REPLACE = "replace"
    DELETE = "delete"


class Via(enum.StrEnum):
    """Where a route points."""

    ONLINK = "onlink"  # onlink via the overlay (L2) device of its family
    UNDERLAY = "underlay"  # directly via the underlay
    TUNNEL = "tunnel"  # into the point-to-point tunnel device of its family
    SITE = "site"  # into the site link (a WireGuard device to nodes of other sites)
    BLACKHOLE = "blackhole"  # dropped here (this node's own subnet, --ip-blackhole-route)
    OTHER = "other"  # none of ours (read from the kernel only)


class PeerDataError(ValueError):
    """A lease cannot be used as a peer (wrong backend, bad BackendData, bad address)."""


IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class Route(NamedTuple):
    gateway: IPAddress | None
    via: Via
    mtu: int = 0  # a path MTU fixed for the peer (``mtu lock``: ops/mesh/path_mtu.py); 0 none


@dataclass
class KernelState:
    """Neighbours (IP -> MAC), FDB (MAC -> remote IP) and routes (subnet -> Route)."""

    neighbours: dict[IPAddress, str] = field(default_factory=dict)
    fdb: dict[str, IPAddress] = field(default_factory=dict)
    routes: dict[IPNetwork, Route] = field(default_factory=dict)

    def tables(self) -> tuple[tuple[Table, dict], ...]:
        return ((Table.NEIGH, self.neighbours), (Table.FDB, self.fdb), (Table.ROUTE, self.routes))

    def add(self, other: KernelState) -> None:
        for (_, mine), (_, theirs) in zip(self.tables(), other.tables(), strict=True):
            mine.update(theirs)

    def entries(self):
        for table, entries in self.tables():
            for key, value in entries.items():
                yield table, key, value

    def size(self) -> int:
        return sum(len(t) for _, t in self.tables())


class DesiredState:
    """The union of every peer's entries, kept incrementally and reference-counted: an entry
    two peers share (two leases of one node share its VTEP MAC) stays until neither needs it,
    and if two peers want different values for one key, the newest wins until it goes away."""

    def __init__(self) -> None:
        self.state = KernelState()
        self._values: dict[tuple[str, Any], dict[Any, int]] = {}

    def add(self, entries: KernelState) -> None:
        tables = dict(self.state.tables())
        for table, key, value in entries.entries():
            counts = self._values.setdefault((table, key), {})
            counts[value] = counts.pop(value, 0) + 1  # re-insert: newest last
            tables[table][key] = value

    def discard(self, entries: KernelState) -> None:
        tables = dict(self.state.tables())
        for table, key, value in entries.entries():
            counts = self._values.get((table, key), {})
            if value not in counts:
                continue
            counts[value] -= 1
            if counts[value] == 0:
                del counts[value]
            if counts:
                tables[table][key] = next(reversed(counts))
            else:
                self._values.pop((table, key), None)
                tables[table].pop(key, None)


class Op(NamedTuple):
    action: Action
    table: Table
    key: Any
    value: Any


@dataclass(frozen=True)
class Peer6:
    """The IPv6 half of a dual-stack peer: its IPv6 subnet and PublicIPv6, and what its
    backend says of it (``entries``: the kernel entries it needs on this node)."""

    subnet: IPv6Network
    public_ip: IPv6Address
    encap: str  # how this node reaches it, in the backend's words ("vxlan", "direct", ...)
    vtep_mac: str = ""
    public_key: str = ""
    udp_port: int = 0  # wireguard: the endpoint port
    entries: KernelState = field(default_factory=lambda: KernelState(), compare=False)


@dataclass(frozen=True)
class Peer:
    """A remote node as the data plane needs it: its subnet, public IP, how its backend
    reaches it (``encap``, a label), what it has of the backends' data (a VXLAN MAC, a UDP
    port, a WireGuard key), and the kernel entries it needs on this node (``entries``)."""

    subnet: IPv4Network
    public_ip: IPv4Address
    encap: str
    vtep_mac: str = ""
    udp_port: int = 0  # a UDP encapsulation port; wireguard: the endpoint port
    public_key: str = ""  # wireguard: base64, as in the lease
    v6: Peer6 | None = None  # dual-stack: the IPv6 half, if usable
    v6_problem: str = ""  # why a lease's IPv6 half is not programmed (its IPv4 half is)
    site: str = ""  # its site, from its node record ("" without one: backend/sites/)
    entries: KernelState = field(default_factory=lambda: KernelState(), compare=False)

    @property
    def gateway(self) -> IPv4Address:
        """The peer's address on the overlay: its subnet's network address."""
        return self.subnet.network_address


# -- the shapes of kernel entries a peer may need --------------------------------------------


def overlay_entries(subnet: IPNetwork, mac: str, public_ip: IPAddress) -> KernelState:
    """An L2 overlay (VXLAN): the peer's VTEP address (its subnet's first address) is a
    neighbour with ``mac``, ``mac`` is forwarded to ``public_ip``, and the subnet is routed
    onlink via that address."""
    gateway = subnet.network_address
    return KernelState(
        neighbours={gateway: mac},
        fdb={mac: public_ip},
        routes={subnet: Route(gateway, Via.ONLINK)},
    )


def underlay_route(subnet: IPNetwork, gateway: IPAddress) -> KernelState:
    """A plain route via the peer's address on the underlay (host-gw, DirectRouting)."""
    return KernelState(routes={subnet: Route(gateway, Via.UNDERLAY)})


def tunnel_route(subnet: IPNetwork) -> KernelState:
    """The subnet into the point-to-point tunnel device (the UDP path)."""
    return KernelState(routes={subnet: Route(None, Via.TUNNEL)})


def site_route(subnet: IPNetwork) -> KernelState:
    """The subnet into the site link (a peer of another site: backend/sites/)."""
    return KernelState(routes={subnet: Route(None, Via.SITE)})


def blackhole_routes(*subnets: IPNetwork | None) -> KernelState:
    """Drop what is sent to these subnets (this node's own) unless a more specific or better
    route (the CNI bridge's) takes it: traffic to an unassigned pod address ends here instead
    of leaving by the default route."""
    return KernelState(routes={s: Route(None, Via.BLACKHOLE) for s in subnets if s is not None})


def with_path_mtu(entries: KernelState, path_mtu: dict[IPNetwork, int]) -> KernelState:
    """``entries`` with the routes to the subnets in ``path_mtu`` carrying their path's MTU."""
    if not path_mtu or not any(s in path_mtu for s in entries.routes):
        return entries
    routes = {
        subnet: route._replace(mtu=path_mtu.get(subnet, 0))
        for subnet, route in entries.routes.items()
    }
    return KernelState(dict(entries.neighbours), dict(entries.fdb), routes)


def peer_entries(peer: Peer) -> KernelState:
    """Every entry a peer needs: its IPv4 half's, and its IPv6 half's."""
    entries = KernelState()
    entries.add(peer.entries)
    if peer.v6 is not None:
        entries.add(peer.v6.entries)
    return entries


# -- what every backend checks of a lease ---------------------------------------------------


def backend_data(lease: Lease) -> dict[str, Any]:
    """The lease's BackendData with lower-case keys (Go's JSON decoding ignores case)."""
    data = lease.attrs.backend_data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PeerDataError("BackendData is not a JSON object")
    return {k.lower(): v for k, v in data.items()}


def parse_mac(text: Any) -> str:
    """A 6-byte MAC (a VtepMAC) in Go's HardwareAddr.String() form (lowercase, colon-separated).

    Accepts what Go's net.ParseMAC accepts for EUI-48: ``aa:bb:..``, ``aa-bb-..`` and
    ``aabb.ccdd.eeff``.
    """
    if not isinstance(text, str):
        raise PeerDataError("VtepMAC is not a string")
    if len(text) == 14 and text.count(".") == 2:
        groups = text.split(".")
        if not all(len(g) == 4 for g in groups):
            raise PeerDataError(f"VtepMAC {text!r} is not a MAC address")
        octets = [g[i : i + 2] for g in groups for i in (0, 2)]
    else:
        octets = text.replace("-", ":").split(":")
        if len(octets) != 6 or not all(len(o) == 2 for o in octets):
            raise PeerDataError(f"VtepMAC {text!r} is not a MAC address")
    try:
        return ":".join(f"{int(o, 16):02x}" for o in octets)
    except ValueError:
        raise PeerDataError(f"VtepMAC {text!r} is not a MAC address") from None


def public_ip_of(lease: Lease) -> IPv4Address:
    """The lease's PublicIP, if it can be a next hop or tunnel endpoint at all."""
    return _check_public_ip(lease)


def _check_public_ip(lease: Lease) -> IPv4Address:
    ip = lease.attrs.public_ip
    if (
        ip.is_unspecified
        or ip.is_multicast
        or ip.is_loopback
        or ip == IPv4Address("255.255.255.255")
    ):
        raise PeerDataError(f"PublicIP {ip} cannot be a tunnel endpoint")
    return ip


def ipv6_half(lease: Lease, network6: IPv6Network, own6: IPv6Network | None) -> IPv6Network:
    """The lease's IPv6 subnet if this node may route it; PeerDataError says why not."""
    subnet6 = lease.ipv6_subnet
    if subnet6 is None:
        raise PeerDataError("the lease has no IPv6 subnet")
    if not subnet6.subnet_of(network6) or subnet6.prefixlen <= network6.prefixlen:
        raise PeerDataError(f"IPv6 subnet {subnet6} is not a subnet of the network {network6}")
    if own6 is not None and subnet6.overlaps(own6):
        raise PeerDataError(f"IPv6 subnet {subnet6} overlaps this node's {own6}")
    return subnet6


def public_ipv6_of(lease: Lease) -> IPv6Address:
    """The lease's PublicIPv6, if it can be a next hop or tunnel endpoint."""
    ip = lease.attrs.public_ipv6
    if ip is None:
        raise PeerDataError("PublicIPv6 is missing")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local:
        raise PeerDataError(f"PublicIPv6 {ip} cannot be a tunnel endpoint")
    return ip


def desired_state(peers: Iterable[Peer]) -> KernelState:
    desired = DesiredState()
    for peer in peers:
        desired.add(peer_entries(peer))
    return desired.state


def diff(desired: KernelState, actual: KernelState, scope: KernelState | None = None) -> list[Op]:
    """Operations that turn ``actual`` into ``desired``.

    With ``scope``, only the keys present in ``scope`` are compared (an event touches one
    peer; there is no need to look at the other thousands). Deletions come first, routes
    before the entries they use; additions put the route last, as upstream does, so a route
    never points at a neighbour that is not there yet.
    """
    deletes: list[Op] = []
    replaces: list[Op] = []
    for (table, want), (_, have), (_, limit) in zip(
        desired.tables(), actual.tables(), (scope or desired).tables(), strict=True
    ):
        keys = limit.keys() if scope is not None else want.keys() | have.keys()
        for key in keys:
            if key in want:
                if have.get(key) != want[key]:
                    replaces.append(Op(Action.REPLACE, table, key, want[key]))
            elif key in have:
                deletes.append(Op(Action.DELETE, table, key, have[key]))
    order = {Table.ROUTE: 0, Table.FDB: 1, Table.NEIGH: 2}
    deletes.sort(key=lambda op: order[op.table])
    replaces.sort(key=lambda op: -order[op.table])
    return deletes + replaces


def record(actual: KernelState, op: Op) -> None:
    """Update the model of the kernel after ``op`` succeeded."""
    table = dict(actual.tables())[op.table]
    if op.action == Action.REPLACE:
        table[op.key] = op.value
    else:
        table.pop(op.key, None)
