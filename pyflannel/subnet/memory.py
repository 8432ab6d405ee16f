"""The subnet manager in memory: the same promises as the etcd one (subnet/manager.py), with
no I/O. The control loops and the daemon's wiring are unit-tested against it; several
managers (nodes) can share one ``MemoryStore`` (the cluster's store).

Faults are a switch: ``store.down`` makes every call raise ``StoreUnavailable`` (and breaks
every watch), ``store.forget_history()`` makes watches that were behind re-list, as after an
etcd compaction. Time is the caller's: a lease expires when ``store.expire(...)`` says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network

from pyflannel.errors import ConfigNotFound, StoreUnavailable
from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.key import subnet_key
from pyflannel.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError
from pyflannel.subnet.manager import (
    LeaseChanges,
    LeaseSnapshot,
    LeaseTokens,
    LeaseUpdate,
    LeaseWatch,
    StoreFacts,
    StoreView,
    SubnetManager,
)


@dataclass
class Record:
    """One subnet's record: its value (a lease's JSON, or junk), when it was last written,
    and the node that wrote it (for ``superseded``)."""

    value: bytes
    revision: int
    ttl: int  # 0: a reservation
    grantor: int | None
    ipv6_subnet: IPv6Network | None
    writer: int  # id of the MemorySubnetManager that wrote it, 0: from outside
    created: int = 0  # the revision that created the key (kept across rewrites)


@dataclass
class Change:
    revision: int
    kind: EventKind
    key: str
    record: Record | None


@dataclass
class MemoryStore:
    """The cluster's store: the config, every record, the history of changes."""

    config: bytes | None = None
    records: dict[str, Record] = field(default_factory=dict)
    history: list[Change] = field(default_factory=list)
    revision: int = 0
    forgotten: int = 0  # changes up to here are no longer in the history
    down: bool = False
    paths: dict[str, dict] = field(default_factory=dict)
    nodes: dict[str, bytes] = field(default_factory=dict)  # node records by subnet key
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0  # every call of every manager (their cost)

    def check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("memory store: down")

    def fail(self) -> None:
        """Unreachable from now on: every call raises, waiting watches break."""
        self.down = True
        self._wake()

    def recover(self) -> None:
        self.down = False
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def write(self, key: str, record: Record | None) -> int:
        self.revision += 1
        if record is None:
            self.records.pop(key, None)
            self.history.append(Change(self.revision, EventKind.DELETE, key, None))
        else:
            record.revision = self.revision
            old = self.records.get(key)
            record.created = old.created if old else self.revision
            self.records[key] = record
            self.history.append(Change(self.revision, EventKind.PUT, key, record))
        self._wake()
        return self.revision

    # -- what an operator or another node does -------------------------------------------

    def put_raw(self, key: str, value: bytes | str, ttl: int = 0) -> None:
        """Write a value as a stranger would (junk too): ``key`` like ``10.1.5.0-24``."""
        raw = value.encode() if isinstance(value, str) else value
        self.write(key, Record(raw, 0, ttl, None, None, 0))

    def delete(self, key: str) -> None:
        self.write(key, None)

    def expire(self, key: str) -> None:
        """The lease at ``key`` ran out of time."""
        if key in self.records:
            self.write(key, None)

    def forget_history(self) -> None:
        """Compact: watches behind the current revision must list again."""
        self.forgotten = self.revision
        self.history.clear()


class MemorySubnetManager(SubnetManager):
    """One node's view of a ``MemoryStore`` (its tokens are the record revisions it read)."""

    name = "memory"

    def __init__(self, store: MemoryStore | None = None):
        self.store = store or MemoryStore()
        self.tokens: LeaseTokens[int] = LeaseTokens()  # the record revision each lease was read at
        self._written: dict[str, int] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def config_location(self) -> str:
        return "memory:config"

    async def network_config(self) -> bytes:
        self.store.check()
        if self.store.config is None:
            raise ConfigNotFound("no network config in the memory store")
        return self.store.config

    def _lease(self, key: str, record: Record) -> tuple[Lease | None, str]:
        try:
            attrs = LeaseAttrs.from_json(record.value)
        except LeaseDecodeError as e:
            return None, f"bad value: {e}"
        address, _, length = key.partition("&")[0].rpartition("-")
        lease = Lease(
            IPv4Network(f"{address}/{length}"),
            attrs,
            record.ipv6_subnet,
            ttl=record.ttl,
            reservation=record.ttl == 0,
            grantor=record.grantor,
        )
        self.tokens.keep(lease, record.revision)
        return lease, ""

    def _event(self, change: Change) -> LeaseEvent:
        address, _, length = change.key.partition("&")[0].rpartition("-")
        subnet = IPv4Network(f"{address}/{length}")
        superseded = change.revision <= self._written.get(change.key, 0)
        if change.record is None:
            return LeaseEvent(EventKind.DELETE, change.key, subnet, superseded=superseded)
        lease, problem = self._lease(change.key, change.record)
        return LeaseEvent(
            EventKind.PUT, change.key, subnet, lease=lease, problem=problem, superseded=superseded
        )

    async def leases(self) -> LeaseSnapshot:
        self.store.check()
        return self._snapshot()

    def _snapshot(self, reason: str = "") -> LeaseSnapshot:
        leases, skipped = [], []
        for key, record in sorted(self.store.records.items()):
            lease, problem = self._lease(key, record)
            if lease is None:
                skipped.append((key, problem))
            else:
                leases.append(lease)
        return LeaseSnapshot(leases, skipped, reason)

    def watch(self, first: LeaseSnapshot | None = None) -> LeaseWatch:
        return MemoryLeaseWatch(self, first)

    async def get_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None
    ) -> Lease | None:
        self.store.check()
        key = subnet_key(subnet, ipv6_subnet)
        record = self.store.records.get(key)
        return None if record is None else self._lease(key, record)[0]

    def _token(self, lease: Lease) -> int:
        return self.tokens.required(lease)

    def created_before(self, a: Lease, b: Lease) -> bool:
        ra, rb = self.store.records.get(a.key), self.store.records.get(b.key)
        return bool(ra and rb and ra.created < rb.created)

    def lease_location(self, lease: Lease) -> str:
        return lease.key

    def removal_hint(self, lease: Lease) -> str:
        return f"delete {lease.key} from the memory store"

    def holder_detail(self, lease: Lease) -> str:
        return ""

    # -- writing ---------------------------------------------------------------------------

    def _put(self, lease: Lease, ttl: int, grantor: int | None, over: int | None) -> Lease | None:
        """Write if the record is at revision ``over`` (None: absent)."""
        record = self.store.records.get(lease.key)
        if (record.revision if record else None) != over:
            return None
        new = Record(lease.attrs.to_json(), 0, ttl, grantor, lease.ipv6_subnet, id(self))
        revision = self.store.write(lease.key, new)
        self._written[lease.key] = revision
        written = replace(lease, ttl=ttl, reservation=ttl == 0, grantor=grantor)
        return self.tokens.keep(written, revision)

    async def create_lease(
        self,
        subnet: IPv4Network,
        attrs: LeaseAttrs,
        ttl: int,
        ipv6_subnet: IPv6Network | None = None,
        grantor: int | None = None,
    ) -> Lease | None:
        self.store.check()
        return self._put(Lease(subnet, attrs, ipv6_subnet), ttl, grantor, None)

    async def replace_lease(
        self, old: Lease, attrs: LeaseAttrs, ttl: int, grantor: int | None = None
    ) -> Lease | None:
        self.store.check()
        if old.reservation:
            ttl, grantor = 0, None
        return self._put(old.with_attrs(attrs), ttl, grantor, self._token(old))

    async def restore_lease(self, lease: Lease) -> Lease | None:
        self.store.check()
        record = self.store.records.get(lease.key)
        if record is None or self._lease(lease.key, record)[0] is not None:
            return None  # nothing unreadable there
        return self._put(lease, lease.ttl, lease.grantor, record.revision)

    async def renew_lease(self, lease: Lease, timeout: float | None = None) -> int:
        self.store.check()
        record = self.store.records.get(lease.key)
        if record is None or record.writer != id(self):
            return 0
        return record.ttl

    async def delete_lease(self, lease: Lease) -> bool:
        self.store.check()
        record = self.store.records.get(lease.key)
        if record is None or record.revision != self._token(lease):
            return False
        self.store.write(lease.key, None)
        return True

    async def release_lease(self, lease: Lease) -> None:
        pass  # nothing outlives a memory record

    async def expires_in(self, lease: Lease) -> int | None:
        self.store.check()
        record = self.store.records.get(lease.key)
        return None if record is None or record.ttl == 0 else record.ttl

    async def publish_paths(self, lease: Lease, summary: dict) -> None:
        self.store.check()
        self.store.paths[str(lease.subnet)] = json.loads(json.dumps(summary))

    async def path_summaries(self) -> dict[str, dict]:
        self.store.check()
        return dict(self.store.paths)

    async def publish_node(self, lease: Lease, record: bytes) -> None:
        self.store.check()
        self.store.nodes[str(lease.subnet)] = record

    async def node_records(self) -> AsyncIterator[dict[str, bytes]]:
        """The records, polled (a memory store has no watch: tests and the demo's alloc)."""
        last = None
        while True:
            self.store.check()
            if self.store.nodes != last:
                last = dict(self.store.nodes)
                yield dict(last)
            await asyncio.sleep(0.2)

    def view(self) -> StoreView:
        return StoreView("memory", "memory", StoreFacts(revision=self.store.revision))


class MemoryLeaseWatch(LeaseWatch):
    def __init__(self, manager: MemorySubnetManager, first: LeaseSnapshot | None):
        self.manager = manager
        self._first = first
        self.revision: int | None = None

    @property
    def position(self) -> str:
        return f"change {self.revision}"

    async def next(self) -> LeaseUpdate:
        store = self.manager.store
        store.check()
        if self.revision is None or self.revision < store.forgotten:
            reason = "" if self.revision is None else "memory store history forgotten"
            first, self._first = self._first, None
            self.revision = store.revision
            return first if first is not None and not reason else self.manager._snapshot(reason)
        while True:
            pending = [c for c in store.history if c.revision > self.revision]
            if pending:
                self.revision = pending[-1].revision
                return LeaseChanges([self.manager._event(c) for c in pending])
            changed = store.changed
            await changed.wait()
            store.check()
            if self.revision < store.forgotten:
                return await self.next()
