"""Relays: two nodes of different sites with no session of their own (behind two NATs that
will not let them open each other, or a path blocked between them) reach each other through a
node with an address of its own that both reach, and go back to direct as soon as a direct
session comes up. Pure: the site link (link.py) reads the sessions and applies the choice.

A relay is not configured as one: it is a node whose site link has a session with both ends.
An end sends the other's subnet through the relay's WireGuard peer (its allowed IPs), the relay's
kernel routes it into its own site link, which sends it on to the other end; WireGuard's
cryptokey routing at every hop takes a packet only from the peer whose allowed IPs hold its
source, so a relay forwards only what members of its network send between themselves, never
anything from outside (it is no open relay). Both ends must agree on the relay (a relayed
packet arrives from the relay's peer, which must be allowed the sender's subnet): each end
publishes its choice in its node record, and an end prefers the relay the other end named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.wireguard.uapi import SESSION_LIFETIME
from pyflannel.subnet.node_record import NodeRecord

RELAY_AFTER = 15.0  # seconds a peer of another site may go without a session before it is relayed
DIRECT_RETRY = 30.0  # seconds between fresh tries of the direct path of a relayed peer


def live(endpoint: PeerEndpoint | None, now: float) -> bool:
    """A WireGuard session that works: a handshake within its lifetime."""
    return (
        endpoint is not None
        and endpoint.last_handshake > 0
        and now - endpoint.last_handshake < SESSION_LIFETIME
    )


def choose_relay(
    own: IPv4Network,
    peer: NodeRecord,
    records: Mapping[IPv4Network, NodeRecord],
    live_with: set[IPv4Network],
) -> IPv4Network | None:
    """The node to relay through to ``peer``: the one ``peer`` named for this node if this
    node has a session with it, else the node with an address of its own and the lowest
    subnet among those it has a session with."""

    def usable(subnet: IPv4Network) -> bool:
        record = records.get(subnet)
        return (
            record is not None and record.public and subnet in live_with and subnet != peer.subnet
        )

    named = peer.via.get(str(own))
    if named:
        try:
            subnet = ip_network(named)
        except ValueError:
            subnet = None
        if isinstance(subnet, IPv4Network) and usable(subnet):
            return subnet
    candidates = sorted(s for s in records if usable(s))
    return candidates[0] if candidates else None


@dataclass
class Relays:
    """Which peers of other sites are relayed, and through whom."""

    via: dict[IPv4Network, IPv4Network] = field(default_factory=dict)
    # peers of other sites without a session: since when
    trying_since: dict[IPv4Network, float] = field(default_factory=dict)
    retried: dict[IPv4Network, float] = field(default_factory=dict)  # a relayed peer's direct try

    def decide(
        self,
        own: IPv4Network,
        now: float,
        across: Iterable[IPv4Network],
        records: Mapping[IPv4Network, NodeRecord],
        sessions: Mapping[IPv4Network, PeerEndpoint],
    ) -> list[str]:
        """Relay the peers in ``across`` (of other sites, through the site link) that have no
        session, each after RELAY_AFTER; a peer with a session again is direct at once. The
        changes, in words."""
        live_with = {s for s, e in sessions.items() if live(e, now)}
        across = set(across)
        said = []
        for subnet in sorted(across):
            if subnet in live_with:
                self.trying_since.pop(subnet, None)
                if self.via.pop(subnet, None) is not None:
                    said.append(f"peer {subnet}: direct again (a session of its own)")
                continue
            since = self.trying_since.setdefault(subnet, now)
            record = records.get(subnet)
            if now - since < RELAY_AFTER or record is None:
                continue
            relay = choose_relay(own, record, records, live_with)
            if relay == self.via.get(subnet):
                continue
            if relay is None:
                del self.via[subnet]
                said.append(f"peer {subnet}: no session, and no node reaches both to relay")
            else:
                self.via[subnet] = relay
                self.retried[subnet] = now
                said.append(
                    f"peer {subnet}: no session of its own for {now - since:.0f} s: relayed via "
                    f"{relay} (its direct path is tried again every {DIRECT_RETRY:.0f} s)"
                )
        for subnet in set(self.trying_since) - across:
            self.trying_since.pop(subnet, None)
        for subnet in set(self.via) - across:
            self.via.pop(subnet, None)
        for subnet in set(self.retried) - set(self.via):
            self.retried.pop(subnet, None)
        return said

    def retry_due(self, now: float) -> list[IPv4Network]:
        """Relayed peers whose direct path is to be tried afresh now (WireGuard gives up its
        handshake after 90 s until something is sent: the peer is written anew)."""
        due = [s for s, at in self.retried.items() if now - at >= DIRECT_RETRY]
        for subnet in due:
            self.retried[subnet] = now
        return due

    def allowed(self, across: Iterable[IPv4Network]) -> dict[IPv4Network, list[str]]:
        """Each peer of another site's allowed IPs: its own subnet, and the subnets relayed
        through it; none for a relayed one (its session is still tried)."""
        allowed = {subnet: [] if subnet in self.via else [str(subnet)] for subnet in across}
        for subnet, relay in sorted(self.via.items()):
            if relay in allowed:
                allowed[relay].append(str(subnet))
        return allowed
