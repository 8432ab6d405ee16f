"""Desired kernel state for a set of peers, and the plan that makes the kernel match it.

Pure: no netlink here. ``KernelState`` describes the tables pyflannel owns on a node —
neighbours and FDB entries on its VXLAN devices, and routes carrying its route protocol number
(via a VXLAN device, directly via the underlay, or into the UDP backend's TUN device) — so
the same ``diff`` serves start-up, events, and repair after someone deleted an entry.

Both families share the tables: an entry's family names its device (an IPv6 neighbour, an FDB
entry towards an IPv6 endpoint, a route to an IPv6 subnet belong to ``flannel-v6.<VNI>``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NamedTuple

from pyflannel.subnet.lease import Lease

VXLAN_BACKEND = "vxlan"
UDP_BACKEND = "udp"
HOST_GW_BACKEND = "host-gw"
WIREGUARD_BACKEND = "wireguard"


class Encap(enum.StrEnum):
    """How this node reaches a peer."""

    VXLAN = "vxlan"  # through the VXLAN device
    DIRECT = "direct"  # same link: a plain route via its public IP (DirectRouting)
    UDP = "udp"  # through the userspace UDP tunnel
    WIREGUARD = "wireguard"  # through the WireGuard device (a peer of it, not a kernel entry)


class Table(enum.StrEnum):
    NEIGH = "neigh"
    FDB = "fdb"
    ROUTE = "route"


class Action(enum.StrEnum):
    REPLACE = "replace"
    DELETE = "delete"


class Via(enum.StrEnum):
    """Where a route points."""

    VXLAN = "vxlan"  # onlink via the VXLAN device
    UNDERLAY = "underlay"  # directly via the underlay
    TUN = "tun"  # into flannel0
    OTHER = "other"  # none of ours (read from the kernel only)


class PeerDataError(ValueError):
    """A lease cannot be used as a peer (wrong backend, bad BackendData, bad address)."""


IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Peer6:
    """The IPv6 half of a dual-stack peer: its IPv6 subnet, PublicIPv6 and (vxlan) the MAC of
    its ``flannel-v6`` device (BackendV6Data)."""

    subnet: IPv6Network
    public_ip: IPv6Address
    encap: Encap
    vtep_mac: str = ""
    public_key: str = ""  # wireguard (BackendV6Data.PublicKey)


@dataclass(frozen=True)
class Peer:
    """A remote node as the data plane needs it."""

    subnet: IPv4Network
    public_ip: IPv4Address
    encap: Encap
    vtep_mac: str = ""  # vxlan
    udp_port: int = 0  # udp; wireguard: the endpoint port
    public_key: str = ""  # wireguard: base64, as in the lease
    v6: Peer6 | None = None  # dual-stack: the IPv6 half, if usable
    v6_problem: str = ""  # why a lease's IPv6 half is not programmed (its IPv4 half is)

    @property
    def gateway(self) -> IPv4Address:
        """The peer's VTEP address on the overlay: its subnet's network address."""
        return self.subnet.network_address


def parse_mac(text: Any) -> str:
    """A 6-byte MAC in Go's HardwareAddr.String() form (lowercase, colon-separated).

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


def _backend_data(lease: Lease) -> dict[str, Any]:
    data = lease.attrs.backend_data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PeerDataError("BackendData is not a JSON object")
    return {k.lower(): v for k, v in data.items()}


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


def _vtep_mac(data: Any, field: str = "BackendData") -> str:
    if data is None or data == {}:
        raise PeerDataError(f"{field} is missing")
    if not isinstance(data, dict):
        raise PeerDataError(f"{field} is not a JSON object")
    mac = parse_mac({k.lower(): v for k, v in data.items()}.get("vtepmac"))
    if int(mac.split(":")[0], 16) & 1:
        raise PeerDataError(f"VtepMAC {mac} is a multicast address")
    return mac


def vxlan_peer(lease: Lease, direct: bool = False) -> Peer:
    """The VXLAN view of a peer's lease; raises PeerDataError if it is not a usable one."""
    if lease.attrs.backend_type != VXLAN_BACKEND:
        raise PeerDataError(f"backend type is {lease.attrs.backend_type or 'udp'!r}, not vxlan")
    mac = _vtep_mac(lease.attrs.backend_data)
    ip = _check_public_ip(lease)
    return Peer(lease.subnet, ip, Encap.DIRECT if direct else Encap.VXLAN, vtep_mac=mac)


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


def vxlan_peer6(lease: Lease, subnet6: IPv6Network, direct: bool = False) -> Peer6:
    """The IPv6 half of a VXLAN peer (BackendV6Data, PublicIPv6); PeerDataError if unusable.
    Its VtepMAC must differ from the IPv4 one: they are two devices, and FDB entries are
    keyed by MAC."""
    mac6 = _vtep_mac(lease.attrs.backend_v6_data, "BackendV6Data")
    try:
        mac4 = _vtep_mac(lease.attrs.backend_data)
    except PeerDataError:
        mac4 = ""
    if mac6 == mac4:
        raise PeerDataError(f"BackendV6Data.VtepMAC {mac6} is also the IPv4 device's")
    encap = Encap.DIRECT if direct else Encap.VXLAN
    return Peer6(subnet6, public_ipv6_of(lease), encap, vtep_mac=mac6)


def udp_port(lease: Lease, default: int) -> int | None:
    """The port at which a lease's owner accepts flannel UDP encapsulation, or None.

    Upstream UDP nodes write no BackendType and expect every node to use the same port
    (``default``). pyflannel nodes that fell back to UDP write BackendType "udp" with their
    Port; pyflannel VXLAN nodes advertise ``UDPPort`` in their BackendData (upstream ignores
    unknown keys there).
    """
    data = _backend_data(lease)
    kind = lease.attrs.backend_type
    if kind == "" or kind == UDP_BACKEND:
        port = data.get("port", default)
    elif kind == VXLAN_BACKEND:
        port = data.get("udpport")
        if port is None:
            return None
    else:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise PeerDataError(f"UDP port {port!r} is not a port number")
    return port


def udp_peer(lease: Lease, default_port: int) -> Peer:
    port = udp_port(lease, default_port)
    if port is None:
        raise PeerDataError(
            f"backend type {lease.attrs.backend_type!r} does not accept UDP encapsulation"
        )
    return Peer(lease.subnet, _check_public_ip(lease), Encap.UDP, udp_port=port)


class Route(NamedTuple):
    gateway: IPAddress | None
    via: Via


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


def peer_entries(peer: Peer) -> KernelState:
    entries = family_entries(peer)
    if peer.v6 is not None:
        entries.add(family_entries(peer.v6))
    return entries


def family_entries(half: Peer | Peer6) -> KernelState:
    """The entries of one family: a peer's IPv4 half, or its IPv6 half."""
    return _family_entries(half.encap, half.subnet, half.public_ip, half.vtep_mac)


def _family_entries(
    encap: Encap, subnet: IPNetwork, public_ip: IPAddress, vtep_mac: str
) -> KernelState:
    if encap == Encap.DIRECT:
        return KernelState(routes={subnet: Route(public_ip, Via.UNDERLAY)})
    if encap == Encap.UDP:
        return KernelState(routes={subnet: Route(None, Via.TUN)})
    if encap == Encap.WIREGUARD:
        return KernelState()  # a WireGuard peer; the network's one route covers it
    gateway = subnet.network_address  # the peer's VTEP address on the overlay
    return KernelState(
        neighbours={gateway: vtep_mac},
        fdb={vtep_mac: public_ip},
        routes={subnet: Route(gateway, Via.VXLAN)},
    )


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
