"""The node's view of every lease in etcd, and which of them are peers to program.

Pure: fed with list snapshots and watch events, it answers with the peers that appeared,
changed or went away. Fixes upstream's LeaseWatcher quirks (interop §4.8):
- an undecodable event is skipped and reported; it never empties the peer table;
- a snapshot (after compaction or reconnect) re-emits peers whose attributes changed;
- the node's own lease is stored but never a peer, also after its subnet changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.lease import Lease


@dataclass
class PeerChanges:
    added: list[Lease] = field(default_factory=list)  # new or changed peers
    removed: list[Lease] = field(default_factory=list)  # as last known, so they can be undone
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class LeaseTable:
    def __init__(
        self,
        network: IPv4Network,
        own: IPv4Network | None = None,
        own_ip: IPv4Address | None = None,
    ):
        self.network = network
        self.own = own
        self.own_ip = own_ip  # this node's public IP: its leases, old or new, are never peers
        self.leases: dict[IPv4Network, Lease] = {}

    def peer_problem(self, lease: Lease) -> str | None:
        """Why a stored lease is not a peer to program, or None if it is one."""
        subnet = lease.subnet
        if self.own is not None and subnet == self.own:
            return "own"
        if self.own_ip is not None and lease.attrs.public_ip == self.own_ip:
            return "own"  # e.g. our previous lease, until etcd tells us who holds it now
        if not subnet.subnet_of(self.network) or subnet.prefixlen <= self.network.prefixlen:
            return f"subnet {subnet} is not a subnet of the network {self.network}"
        if self.own is not None and subnet.overlaps(self.own):
            return f"subnet {subnet} overlaps this node's subnet {self.own}"
        return None

    def peers(self) -> list[Lease]:
        return [lease for lease in self.leases.values() if self.peer_problem(lease) is None]

    def _visible(self, subnet: IPv4Network) -> Lease | None:
        lease = self.leases.get(subnet)
        return lease if lease is not None and self.peer_problem(lease) is None else None

    def _changes(
        self, before: dict[IPv4Network, Lease | None], changes: PeerChanges
    ) -> PeerChanges:
        for subnet, old in before.items():
            new = self._visible(subnet)
            if new is not None and (old is None or new.attrs != old.attrs):
                changes.added.append(new)
            elif new is None and old is not None:
                changes.removed.append(old)
            if new is None and subnet in self.leases:
                problem = self.peer_problem(self.leases[subnet])
                if problem != "own":
                    changes.ignored.append((self.leases[subnet].key, problem or ""))
        return changes

    def reset(self, snapshot: Iterable[Lease]) -> PeerChanges:
        """Replace everything with a full listing; emit the difference."""
        fresh = {lease.subnet: lease for lease in snapshot}
        touched = self.leases.keys() | fresh.keys()
        before = {subnet: self._visible(subnet) for subnet in touched}
        self.leases = fresh
        return self._changes(before, PeerChanges())

    def apply(self, events: Iterable[LeaseEvent]) -> PeerChanges:
        changes = PeerChanges()
        before: dict[IPv4Network, Lease | None] = {}
        for event in events:
            if event.subnet is None or (event.kind == EventKind.PUT and event.lease is None):
                # Junk: keep what we knew about that key, and every other peer.
                changes.ignored.append((event.key, event.problem))
                continue
            if event.subnet not in before:
                before[event.subnet] = self._visible(event.subnet)
            if event.kind == EventKind.DELETE or event.lease is None:
                self.leases.pop(event.subnet, None)
            else:
                self.leases[event.subnet] = event.lease
        return self._changes(before, changes)

    def set_own(self, own: IPv4Network | None) -> PeerChanges:
        """The node's subnet changed (lease lost and re-acquired): re-evaluate overlaps."""
        before = {subnet: self._visible(subnet) for subnet in self.leases}
        self.own = own
        return self._changes(before, PeerChanges())
