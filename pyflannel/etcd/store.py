"""The subnet manager on etcd v3, with upstream flannel's schema: ``<prefix>/config`` and
``<prefix>/subnets/<key>`` holding upstream's LeaseAttrs JSON, each lease attached to an etcd
lease of its TTL.

Every write is conditional (a transaction on the key's mod revision), so a node never
overwrites a lease another node wrote after it looked; upstream's renewals and reuse are
unconditional puts. What makes that possible without a ``Lease`` carrying etcd's bookkeeping:
every lease object this manager hands out (from a list, a get, an event, its own write) has a
token here, its key's mod revision and etcd lease ID when it was read, kept for as long as the
object lives. A write "on" a lease is conditional on that token.

The etcd lease IDs this node grants carry its fingerprint (subnet/owner.py): bits 62..23 are
the fingerprint, the low bits random (etcd lets a client choose lease IDs); a lease's
``grantor`` is read back from them.

Decoding problems are reported per key, never for the whole list.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network

from pyflannel.errors import ConfigNotFound
from pyflannel.etcd.client import EtcdClient, EtcdError, KeyValue, RevisionCompacted, TLSFiles
from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.key import parse_subnet_key, subnet_key
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
from pyflannel.subnet.stores import StoreOptions

log = logging.getLogger(__name__)

RANDOM_BITS = 23  # an etcd lease ID = fingerprint (40 bits) << 23 | random
GRANT_ATTEMPTS = 3  # a chosen lease ID that exists already: try other random bits


def join_key(prefix: str, *parts: str) -> str:
    """Go's path.Join for keys: no empty elements, no trailing slash."""
    elements = [p for part in (prefix, *parts) for p in part.split("/") if p]
    return ("/" if prefix.startswith("/") else "") + "/".join(elements)


def lease_id_for(grantor: int, rng: random.Random | None = None) -> int:
    """An etcd lease ID that says "granted by the node with this fingerprint" (never 0)."""
    low = (rng or random).randrange(1, 1 << RANDOM_BITS)
    return (grantor << RANDOM_BITS) | low


def grantor_of(lease_id: int) -> int | None:
    return lease_id >> RANDOM_BITS if lease_id > 0 else None


@dataclass(frozen=True)
class Token:
    """etcd's bookkeeping of one lease object: its key's mod revision when read or written,
    and the etcd lease the key was attached to (0: a reservation)."""

    mod_revision: int
    lease_id: int
    created: int = 0  # the key's create revision (0: not known)


class EtcdSubnetManager(SubnetManager):
    name = "etcd"

    def __init__(self, client: EtcdClient, prefix: str = "/coreos.com/network"):
        self.client = client
        self.prefix = prefix
        self.config_key = join_key(prefix, "config")
        # Upstream lists "<prefix>/subnets" without the slash, which would also match a
        # sibling such as "<prefix>/subnets-old/..."; every lease key has the slash.
        self.subnets_prefix = join_key(prefix, "subnets") + "/"
        self.tokens: LeaseTokens[Token] = LeaseTokens()
        self._written: dict[str, int] = {}  # key -> revision of this node's last write to it
        self._junk: dict[str, int] = {}  # key -> mod revision of an unreadable value there
        self._watch: EtcdLeaseWatch | None = None  # the latest stream, for the view
        self._latest: tuple[LeaseSnapshot, int] | None = None  # the last listing, its revision

    # -- keys ------------------------------------------------------------------------------

    def key(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        """``<prefix>/subnets/10.1.5.0-24`` (``&fd00:..::-64`` appended on a dual-stack
        network)."""
        return self.subnets_prefix + subnet_key(subnet, ipv6_subnet)

    def _key_of(self, lease: Lease) -> str:
        return self.subnets_prefix + lease.key

    @property
    def config_location(self) -> str:
        return self.config_key

    def lease_location(self, lease: Lease) -> str:
        return self._key_of(lease)

    def removal_hint(self, lease: Lease) -> str:
        return f"etcdctl del {self._key_of(lease)}"

    def holder_detail(self, lease: Lease) -> str:
        token = self.tokens.of(lease)
        return f"etcd lease {token.lease_id:x}" if token and token.lease_id else ""

    def _token(self, lease: Lease) -> Token:
        return self.tokens.required(lease)

    def _decode(self, kind: EventKind, kv: KeyValue) -> LeaseEvent:
        key = kv.key.decode(errors="replace")
        parsed = parse_subnet_key(key)
        if parsed is None:
            return LeaseEvent(kind, key, None, problem="not a subnet key")
        subnet, ipv6_subnet = parsed
        superseded = kv.mod_revision <= self._written.get(key, 0)
        if kind == EventKind.DELETE:
            self._junk.pop(key, None)
            return LeaseEvent(kind, key, subnet, superseded=superseded)
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except LeaseDecodeError as e:
            self._junk[key] = kv.mod_revision
            return LeaseEvent(kind, key, subnet, problem=f"bad value: {e}", superseded=superseded)
        self._junk.pop(key, None)
        lease = Lease(
            subnet, attrs, ipv6_subnet, reservation=kv.lease == 0, grantor=grantor_of(kv.lease)
        )
        self.tokens.keep(lease, Token(kv.mod_revision, kv.lease, kv.create_revision))
        return LeaseEvent(kind, key, subnet, lease=lease, superseded=superseded)

    def created_before(self, a: Lease, b: Lease) -> bool:
        ta, tb = self.tokens.of(a), self.tokens.of(b)
        return bool(ta and tb and ta.created and tb.created and ta.created < tb.created)

    # -- reading ---------------------------------------------------------------------------

    async def network_config(self) -> bytes:
        kv, _ = await self.client.get(self.config_key.encode())
        if kv is None:
            raise ConfigNotFound(
                f"flannel config not found in etcd store at {self.config_key}. "
                "Did you create your config using etcdv3 API?"
            )
        return kv.value

    async def _list(self) -> tuple[LeaseSnapshot, int]:
        kvs, revision = await self.client.get_prefix(self.subnets_prefix.encode())
        leases: list[Lease] = []
        skipped: list[tuple[str, str]] = []
        for kv in kvs:
            event = self._decode(EventKind.PUT, kv)
            if event.lease is None:
                skipped.append((event.key, event.problem))
            else:
                leases.append(event.lease)
        snapshot = LeaseSnapshot(leases, skipped)
        self._latest = (snapshot, revision)
        return snapshot, revision

    async def leases(self) -> LeaseSnapshot:
        return (await self._list())[0]

    def _revision_of(self, snapshot: LeaseSnapshot) -> int | None:
        """The revision of the listing this manager made last, if it is ``snapshot``."""
        latest = self._latest
        return latest[1] if latest is not None and latest[0] is snapshot else None

    def watch(self, first: LeaseSnapshot | None = None) -> LeaseWatch:
        self._watch = EtcdLeaseWatch(self, first)
        return self._watch

    async def get_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None
    ) -> Lease | None:
        kv, _ = await self.client.get(self.key(subnet, ipv6_subnet).encode())
        return None if kv is None else self._decode(EventKind.PUT, kv).lease

    # -- writing ---------------------------------------------------------------------------

    async def _grant(self, ttl: int, grantor: int | None) -> int:
        if grantor is not None:
            for _ in range(GRANT_ATTEMPTS):
                try:
                    return (await self.client.grant(ttl, lease_id_for(grantor)))[0]
                except EtcdError as e:
                    if "exists" not in str(e):
                        raise
        return (await self.client.grant(ttl))[0]

    async def create_lease(
        self,
        subnet: IPv4Network,
        attrs: LeaseAttrs,
        ttl: int,
        ipv6_subnet: IPv6Network | None = None,
        grantor: int | None = None,
    ) -> Lease | None:
        lease_id = await self._grant(ttl, grantor)
        return await self._write(
            Lease(subnet, attrs, ipv6_subnet), lease_id, mod_revision=0, ttl=ttl, fresh=True
        )

    async def replace_lease(
        self, old: Lease, attrs: LeaseAttrs, ttl: int, grantor: int | None = None
    ) -> Lease | None:
        token = self._token(old)
        if old.reservation:
            return await self._write(
                old.with_attrs(attrs),
                0,
                mod_revision=token.mod_revision,
                ttl=0,
                created=token.created,
            )
        lease_id = await self._grant(ttl, grantor)
        lease = await self._write(
            old.with_attrs(attrs),
            lease_id,
            mod_revision=token.mod_revision,
            ttl=ttl,
            fresh=True,
            created=token.created,
        )
        if lease is not None:
            await self._revoke_if_unused(token.lease_id)
        return lease

    async def restore_lease(self, lease: Lease) -> Lease | None:
        junk = self._junk.get(self._key_of(lease))
        if junk is None:
            return None  # no unreadable value there (as far as we know): nothing to undo
        token = self._token(lease)
        return await self._write(
            lease, token.lease_id, mod_revision=junk, ttl=lease.ttl, created=token.created
        )

    async def _write(
        self,
        lease: Lease,
        lease_id: int,
        *,
        mod_revision: int,
        ttl: int,
        fresh: bool = False,
        created: int = 0,
    ) -> Lease | None:
        """Write ``lease`` (its subnets name the key) attached to ``lease_id``, if the key is
        at ``mod_revision`` (0: absent; else ``created`` is its create revision)."""
        key = self._key_of(lease)
        try:
            revision = await self.client.put_if(
                key.encode(), lease.attrs.to_json(), lease=lease_id, mod_revision=mod_revision
            )
        except BaseException:
            if fresh:
                await self._revoke_quietly(lease_id)
            raise
        if revision is None:
            if fresh:
                await self._revoke_quietly(lease_id)
            return None
        self._written[key] = revision
        self._junk.pop(key, None)
        written = replace(lease, ttl=ttl, reservation=lease_id == 0, grantor=grantor_of(lease_id))
        created = created if mod_revision else revision  # a new key is created by this write
        return self.tokens.keep(written, Token(revision, lease_id, created))

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self.client.revoke(lease_id)
        except Exception as e:  # the lease expires by itself; nothing is lost
            log.debug("could not revoke unused etcd lease %x: %s", lease_id, e)

    async def _revoke_if_unused(self, lease_id: int) -> None:
        """Upstream leaves the previous etcd lease to expire; revoke it if no key uses it."""
        if not lease_id:
            return
        try:
            ttl, keys = await self.client.time_to_live(lease_id, keys=True)
            if ttl > 0 and not keys:
                await self.client.revoke(lease_id)
        except Exception as e:
            log.debug("could not revoke previous etcd lease %x: %s", lease_id, e)

    async def renew_lease(self, lease: Lease, timeout: float | None = None) -> int:
        return await self.client.keepalive(self._token(lease).lease_id, timeout)

    async def delete_lease(self, lease: Lease) -> bool:
        return await self.client.delete_if(
            self._key_of(lease).encode(), mod_revision=self._token(lease).mod_revision
        )

    async def release_lease(self, lease: Lease) -> None:
        token = self.tokens.of(lease)
        if token is not None and token.lease_id:
            await self._revoke_quietly(token.lease_id)

    async def expires_in(self, lease: Lease) -> int | None:
        token = self.tokens.of(lease)
        if token is None or not token.lease_id:
            return None
        return (await self.client.time_to_live(token.lease_id))[0]

    # -- mesh summaries: pyflannel only, outside subnets/ (upstream ignores them) ----------

    @property
    def mesh_prefix(self) -> str:
        return join_key(self.prefix, "pyflannel", "mesh") + "/"

    async def publish_paths(self, lease: Lease, summary: dict) -> None:
        """Attached to the node's etcd lease: it lives and expires with the lease and costs a
        write only when a path state changes."""
        key = (self.mesh_prefix + subnet_key(lease.subnet)).encode()
        value = json.dumps(summary, sort_keys=True).encode()
        await self.client.put(key, value, lease=self._token(lease).lease_id)

    async def path_summaries(self) -> dict[str, dict]:
        kvs, _ = await self.client.get_prefix(self.mesh_prefix.encode())
        out = {}
        for kv in kvs:
            try:
                doc = json.loads(kv.value)
                out[str(doc["subnet"])] = doc
            except (ValueError, KeyError, TypeError):
                continue
        return out

    # -- node records: pyflannel only, outside subnets/ ------------------------------------

    @property
    def nodes_prefix(self) -> str:
        return join_key(self.prefix, "pyflannel", "nodes") + "/"

    async def publish_node(self, lease: Lease, record: bytes) -> None:
        key = (self.nodes_prefix + subnet_key(lease.subnet)).encode()
        await self.client.put(key, record, lease=self._token(lease).lease_id)

    async def node_records(self) -> AsyncIterator[dict[str, bytes]]:
        """One read of the prefix, then its watch from the next revision on."""
        prefix = self.nodes_prefix.encode()
        kvs, revision = await self.client.get_prefix(prefix)
        records = {kv.key.decode(errors="replace"): kv.value for kv in kvs}
        yield dict(records)
        async for response in self.client.watch_prefix(prefix, revision + 1):
            for event in response.events:
                key = event.kv.key.decode(errors="replace")
                if event.type == "delete":
                    records.pop(key, None)
                else:
                    records[key] = event.kv.value
            if response.events:
                yield dict(records)

    # -- the store itself ------------------------------------------------------------------

    def view(self) -> StoreView:
        watch, latest = self._watch, self._latest
        revision = watch.revision if watch is not None else None
        if revision is None and latest is not None:
            revision = latest[1]
        return StoreView(
            kind="etcd",
            address=self.client.endpoint.url,
            facts=StoreFacts(
                endpoints=tuple(e.url for e in self.client.endpoints),
                revision=revision,
                leader=f"{self.client.leaders.leader:x}" if self.client.leaders.leader else "",
                leader_changes_last_hour=self.client.leaders.changes_within(time.time()),
                member_rtt_ms=self.client.status_rtt_ms,
            ),
        )

    async def members(self) -> list[dict]:
        return await self.client.members()

    async def close(self) -> None:
        await self.client.close()


class EtcdLeaseWatch(LeaseWatch):
    """List at revision R, watch from R+1, apply every event of every response; after a
    break resume from the last revision + 1 (on whichever member the client reaches); when
    etcd has compacted that history, list again."""

    def __init__(self, store: EtcdSubnetManager, first: LeaseSnapshot | None):
        self.store = store
        self._first = first
        self.revision: int | None = None  # everything up to here has been delivered
        self._stream: AsyncIterator | None = None
        self._relist_reason = ""

    @property
    def position(self) -> str:
        return f"revision {self.revision}"

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()  # type: ignore[attr-defined]

    async def next(self) -> LeaseUpdate:
        if self.revision is None:
            return await self._snapshot()
        if self._stream is None:
            self._stream = self.store.client.watch_prefix(
                self.store.subnets_prefix.encode(), self.revision + 1
            ).__aiter__()
        try:
            resp = await self._stream.__anext__()
        except RevisionCompacted as e:
            self._stream = None
            self._relist_reason = f"{e} (we were at {self.revision})"
            self.revision = None
            return await self._snapshot()
        except BaseException:
            self._stream = None
            raise
        if resp.created:
            return LeaseChanges([])  # (re)connected: nothing new, but the stream is live
        events = [self.store._decode(EventKind(ev.type), ev.kv) for ev in resp.events]
        self.revision = resp.revision
        return LeaseChanges(events)

    async def _snapshot(self) -> LeaseSnapshot:
        first, self._first = self._first, None
        revision = None if first is None else self.store._revision_of(first)
        if first is not None and revision is not None:
            snapshot = first
        else:
            snapshot, revision = await self.store._list()
        self.revision = revision
        reason, self._relist_reason = self._relist_reason, ""
        return replace(snapshot, reason=reason)


def client_for(options: StoreOptions, timeout: float = 5.0) -> EtcdClient:
    """The etcd client these options describe (endpoints, TLS, auth)."""
    return EtcdClient(
        list(options.endpoints),
        username=options.username,
        password=options.password,
        tls=TLSFiles(options.cafile, options.certfile, options.keyfile),
        timeout=timeout,
    )


def open_store(options: StoreOptions, timeout: float = 5.0) -> EtcdSubnetManager:
    """The etcd subnet manager for these options (subnet/stores.py)."""
    client = client_for(options, timeout)
    plaintext = [e.url for e in client.endpoints if not e.tls]
    if plaintext and (options.cafile or options.certfile):
        log.warning(
            "TLS files are given but %s use http://; TLS applies to https:// only",
            ", ".join(plaintext),
        )
    return EtcdSubnetManager(client, options.prefix)
