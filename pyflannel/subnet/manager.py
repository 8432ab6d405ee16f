"""The subnet manager: where a network's leases live (upstream's ``subnet.Manager``).

The control loops and the daemon see only this interface and the domain's types (``Lease``,
``LeaseEvent``, ``NetworkConfig``'s raw text). ``pyflannel/etcd/store.py`` implements it on
etcd with upstream's exact schema; ``pyflannel/subnet/memory.py`` in memory, for unit tests.

What an implementation promises:
- **Writes are conditional.** ``create_lease`` succeeds only if nobody holds the subnet;
  ``replace_lease``, ``delete_lease`` and ``restore_lease`` only if the record is still what
  this manager last saw of it (a read, an event or its own write). A lost race is ``None`` /
  ``False``, never an overwrite. How it knows (etcd: the key's mod revision and lease ID) is
  its own business: a ``Lease`` carries no such token.
- **The stream of changes never loses one.** ``watch()`` gives a snapshot of every lease,
  then the changes; after a break it resumes where it was, and when it cannot (the store
  forgot that history) it gives a fresh snapshot, which the caller diffs.
- **Expected trouble is a ``StoreUnavailable``** (retry later, the state is unchanged) or a
  ``StoreError`` (refused: auth, permissions, a server error), each with a message an
  operator can act on.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

from pyflannel.subnet.event import LeaseEvent
from pyflannel.subnet.lease import Lease, LeaseAttrs

T = TypeVar("T")


class LeaseTokens(Generic[T]):
    """A store's own token for each lease object it hands out (etcd: the key's mod revision
    and etcd lease ID), kept for as long as the object lives. By identity: two reads of one
    lease at different moments are equal leases, not equal tokens."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref, T]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def keep(self, lease: Lease, token: T) -> Lease:
        ident, forget = id(lease), self._by_id.pop
        self._by_id[ident] = (weakref.ref(lease, lambda _: forget(ident, None)), token)
        return lease

    def of(self, lease: Lease) -> T | None:
        entry = self._by_id.get(id(lease))
        return entry[1] if entry is not None and entry[0]() is lease else None

    def required(self, lease: Lease) -> T:
        token = self.of(lease)
        if token is None:
            raise ValueError(f"lease {lease.key} was not read from this store")
        return token


@dataclass(frozen=True)
class LeaseSnapshot:
    """Every lease of the network, at one moment; ``skipped``: (key, why) of unreadable ones."""

    leases: list[Lease]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""  # why a watch re-listed (its history was forgotten), for the log


@dataclass(frozen=True)
class LeaseChanges:
    """Changes since the previous update of a watch, in the order they happened."""

    events: list[LeaseEvent]


LeaseUpdate = LeaseSnapshot | LeaseChanges


class LeaseWatch(abc.ABC):
    """One resumable stream of the network's leases (``SubnetManager.watch``)."""

    @abc.abstractmethod
    async def next(self) -> LeaseUpdate:
        """The next update: first a snapshot, then changes (a fresh snapshot whenever the
        changes since the last update cannot be had). Raises ``StoreUnavailable`` or
        ``StoreError`` when the store cannot be read; the next call resumes where it was."""

    @property
    @abc.abstractmethod
    def position(self) -> str:
        """Where in the store's history the stream is, in words ("revision 42")."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """End the stream (the next ``next`` starts it again)."""


@dataclass(frozen=True)
class StoreFacts:
    """What a store says of itself in status (etcd: all of them; the in-memory store: its
    revision). A new fact is a field here, filled by the store that has it."""

    endpoints: tuple[str, ...] = ()
    revision: int | None = None  # the revision the lease watch is at
    leader: str = ""  # etcd: the leader's member ID (hex)
    leader_changes_last_hour: int | None = None
    member_rtt_ms: float | None = None  # the last status check of the member in use


@dataclass(frozen=True)
class StoreView:
    """The store as status shows it: its kind, the member / server in use, its facts."""

    kind: str  # "etcd", ...
    address: str  # the member / server in use now
    facts: StoreFacts = StoreFacts()


class SubnetManager(abc.ABC):
    name: str = "store"  # in log lines: "etcd unreachable while ..."

    # -- the network ---------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def config_location(self) -> str:
        """Where the network config is, for messages (etcd: its key)."""

    @abc.abstractmethod
    async def network_config(self) -> bytes:
        """The network config's raw text; ``ConfigNotFound`` if there is none."""

    # -- the leases of the network -------------------------------------------------------

    @abc.abstractmethod
    async def leases(self) -> LeaseSnapshot:
        """Every lease now."""

    @abc.abstractmethod
    def watch(self, first: LeaseSnapshot | None = None) -> LeaseWatch:
        """A stream of the leases: ``first`` (a snapshot just read) as its first update,
        else a fresh one."""

    @abc.abstractmethod
    async def get_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None
    ) -> Lease | None:
        """The lease of a subnet now, or None."""

    @abc.abstractmethod
    def created_before(self, a: Lease, b: Lease) -> bool:
        """Was ``a``'s key created before ``b``'s (both as this manager last saw them)?"""

    @abc.abstractmethod
    def lease_location(self, lease: Lease) -> str:
        """Where a lease is, for messages (etcd: its key)."""

    @abc.abstractmethod
    def removal_hint(self, lease: Lease) -> str:
        """The command an operator types to delete a lease (etcd: ``etcdctl del <key>``)."""

    @abc.abstractmethod
    def holder_detail(self, lease: Lease) -> str:
        """What the store knows of a lease's holder beyond the lease, for a conflict message
        (etcd: "etcd lease 3f2a..."; "" if nothing)."""

    # -- this node's lease -----------------------------------------------------------------

    @abc.abstractmethod
    async def create_lease(
        self,
        subnet: IPv4Network,
        attrs: LeaseAttrs,
        ttl: int,
        ipv6_subnet: IPv6Network | None = None,
        grantor: int | None = None,
    ) -> Lease | None:
        """Claim a free subnet for ``ttl`` seconds, granted by the node with fingerprint
        ``grantor``; None if another node has it."""

    @abc.abstractmethod
    async def replace_lease(
        self, old: Lease, attrs: LeaseAttrs, ttl: int, grantor: int | None = None
    ) -> Lease | None:
        """Take ``old`` over with ``attrs`` if it is still what was read; a reservation stays
        a reservation. None if it changed meanwhile."""

    @abc.abstractmethod
    async def restore_lease(self, lease: Lease) -> Lease | None:
        """Put this node's ``lease`` back over the unreadable value last seen on its subnet,
        if that value is still there; None if something else is there now."""

    @abc.abstractmethod
    async def renew_lease(self, lease: Lease, timeout: float | None = None) -> int:
        """Keep this node's lease alive; the seconds it now has, 0 if it is gone."""

    @abc.abstractmethod
    async def delete_lease(self, lease: Lease) -> bool:
        """Delete a lease if it is still what was read."""

    @abc.abstractmethod
    async def release_lease(self, lease: Lease) -> None:
        """Give up this node's claim on a lease it just wrote (best effort, never raises)."""

    @abc.abstractmethod
    async def expires_in(self, lease: Lease) -> int | None:
        """Seconds a lease has left (None: a reservation, or unknown)."""

    # -- what this node publishes beside its lease -----------------------------------------

    @abc.abstractmethod
    async def publish_paths(self, lease: Lease, summary: dict) -> None:
        """This node's view of its paths to peers, living and expiring with its lease."""

    @abc.abstractmethod
    async def path_summaries(self) -> dict[str, dict]:
        """Every node's published paths, by its subnet."""

    @abc.abstractmethod
    async def publish_node(self, lease: Lease, record: bytes) -> None:
        """This node's record (subnet/node_record.py), living and expiring with its lease."""

    @abc.abstractmethod
    def node_records(self) -> AsyncIterator[dict[str, bytes]]:
        """Every node's record as stored (by key), once now and again after each change;
        raises the store's errors (the caller starts again: a fresh read)."""

    # -- the store itself ----------------------------------------------------------------

    @abc.abstractmethod
    def view(self) -> StoreView:
        """The store as status shows it (no I/O)."""

    async def members(self) -> list[dict]:
        """The store's members, if it is a cluster: name, URL, leader, ... (status)."""
        return []

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""
