"""Where a peer is, from this node's site and the peer's node record, and so how it is
reached. Pure.

- No record (upstream flanneld, or a pyflannel node without ``--site``): as its lease says,
  the network's backend to its ``PublicIP``, as before sites.
- Same site: the network's backend, in clear, to its *inside* address (its interface's, on
  the site's own network: a provider's private LAN, an office LAN).
- Another site: encrypted, over the outside addresses: the site link (a WireGuard device of
  its own) for a backend that does not encrypt, the backend itself for wireguard. Sent first to
  the peer's own outside address, else its lease's ``PublicIP``; a peer behind NAT is then
  known where its packets come from (WireGuard roams, and pyflannel keeps what it learned).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from pyflannel.subnet.lease import Lease
from pyflannel.subnet.node_record import NodeRecord, parse_endpoint


class Where(enum.StrEnum):
    """How a peer is placed; the value is the ``path`` status and /metrics show."""

    AS_LEASE = "as its lease says"
    IN_SITE = "in site"
    ACROSS = "across sites"


@dataclass(frozen=True)
class Placement:
    where: Where
    address: IPv4Address  # where it is sent: its inside address, its outside one, or PublicIP
    site: str = ""  # its site ("" without a record)
    port: int = 0  # across sites: its site link's port there (behind NAT: as others see it)

    def describe(self, own_site: str) -> str:
        if self.where is Where.IN_SITE:
            return f"site {self.site}, at its inside address {self.address}"
        if self.where is Where.ACROSS:
            return (
                f"site {self.site} (this node: {own_site}), encrypted to {self.address}:{self.port}"
            )
        return f"no site (no node record): at its PublicIP {self.address}"


@dataclass(frozen=True)
class PlacementView:
    """A peer's placement as status, trace and /metrics show it."""

    site: str  # its site ("" without a record)
    path: str  # "in site" | "across sites" | "relayed" | "as its lease says"
    encrypted: bool  # by the site link, or the network's own wireguard backend
    address: str  # where it is sent (inside, outside or PublicIP)
    via: str = ""  # relayed: the relay's subnet
    words: str = ""  # the whole of it, in words


def place(own_site: str, lease: Lease, record: NodeRecord | None) -> Placement:
    if record is None or record.subnet != lease.subnet:
        return Placement(Where.AS_LEASE, lease.attrs.public_ip)
    if record.site == own_site:
        return Placement(Where.IN_SITE, record.inside_ip, record.site)
    return Placement(
        Where.ACROSS,
        record.outside_ip or lease.attrs.public_ip,
        record.site,
        record.outside_port or record.site_port,
    )


def outside_as_seen(
    subnet: IPv4Network, records: Iterable[NodeRecord]
) -> tuple[IPv4Address, int] | None:
    """Where the nodes with addresses of their own see the site link of ``subnet`` (a node
    behind NAT learning its outside address and port): the endpoint most of them name."""
    seen = Counter(
        endpoint
        for record in records
        if record.public
        for endpoint in (parse_endpoint(record.seen.get(str(subnet), "")),)
        if endpoint is not None
    )
    if not seen:
        return None
    return max(seen.items(), key=lambda item: (item[1], -int(item[0][0]), -item[0][1]))[0]


def at_address(lease: Lease, address: IPv4Address) -> Lease:
    """The lease as the backend is to use it: sent to ``address`` instead of its PublicIP."""
    if lease.attrs.public_ip == address:
        return lease
    return replace(lease, attrs=replace(lease.attrs, public_ip=address))
