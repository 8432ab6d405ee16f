"""Upstream flannel's etcd schema: ``<prefix>/config`` and ``<prefix>/subnets/<key>``.

Every write is conditional (a transaction on the key's mod_revision), so a node never
overwrites a lease another node wrote after it looked; upstream's renewals and reuse are
unconditional puts. Decoding problems are reported per key, never for the whole list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network

from pyflannel.errors import ConfigNotFound
from pyflannel.etcd.client import EtcdClient, EtcdError, KeyValue
from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.key import parse_subnet_key, subnet_key
from pyflannel.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError

log = logging.getLogger(__name__)


def join_key(prefix: str, *parts: str) -> str:
    """Go's path.Join for keys: no empty elements, no trailing slash."""
    elements = [p for part in (prefix, *parts) for p in part.split("/") if p]
    return ("/" if prefix.startswith("/") else "") + "/".join(elements)


@dataclass(frozen=True)
class LeaseBatch:
    revision: int  # resume the watch after this (0: no progress, e.g. ``created``)
    events: list[LeaseEvent]
    created: bool = False


GRANT_ATTEMPTS = 3  # a chosen lease ID that exists already: try other random bits


class Registry:
    def __init__(
        self,
        client: EtcdClient,
        prefix: str = "/coreos.com/network",
        lease_ids: Callable[[], int] | None = None,
    ):
        """``lease_ids``: makes the IDs of the etcd leases we grant (this node's fingerprint,
        subnet/owner.py); None lets etcd choose."""
        self.client = client
        self.prefix = prefix
        self.lease_ids = lease_ids
        self.config_key = join_key(prefix, "config")
        # Upstream lists "<prefix>/subnets" without the slash, which would also match a
        # sibling such as "<prefix>/subnets-old/..."; every lease key has the slash.
        self.subnets_prefix = join_key(prefix, "subnets") + "/"

    def lease_key(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        """The key of a lease: ``<prefix>/subnets/10.1.5.0-24`` (``&fd00:..::-64`` appended on
        a dual-stack network)."""
        return self.subnets_prefix + subnet_key(subnet, ipv6_subnet)

    # Mesh health summaries: pyflannel only, outside subnets/ (upstream ignores them), each
    # attached to its node's etcd lease, so it lives and expires with the lease and costs a
    # write only when a path state changes.

    @property
    def mesh_prefix(self) -> str:
        return join_key(self.prefix, "pyflannel", "mesh") + "/"

    async def put_mesh_summary(self, subnet: IPv4Network, summary: dict, lease_id: int) -> None:
        key = (self.mesh_prefix + subnet_key(subnet)).encode()
        await self.client.put(key, json.dumps(summary, sort_keys=True).encode(), lease=lease_id)

    async def mesh_summaries(self) -> dict[str, dict]:
        """node subnet -> its published summary (junk skipped)."""
        kvs, _ = await self.client.get_prefix(self.mesh_prefix.encode())
        out = {}
        for kv in kvs:
            try:
                doc = json.loads(kv.value)
                out[str(doc["subnet"])] = doc
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def network_config(self) -> bytes:
        kv, _ = await self.client.get(self.config_key.encode())
        if kv is None:
            raise ConfigNotFound(
                f"flannel config not found in etcd store at {self.config_key}. "
                "Did you create your config using etcdv3 API?"
            )
        return kv.value

    async def list_leases(self) -> tuple[list[Lease], int, list[tuple[str, str]]]:
        """All decodable leases in key order, the store revision, and (key, problem) skipped."""
        kvs, revision = await self.client.get_prefix(self.subnets_prefix.encode())
        leases: list[Lease] = []
        skipped: list[tuple[str, str]] = []
        for kv in kvs:
            event = self._decode(EventKind.PUT, kv)
            if event.lease is None:
                skipped.append((event.key, event.problem))
            else:
                leases.append(event.lease)
        return leases, revision, skipped

    async def get_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None
    ) -> Lease | None:
        kv, _ = await self.client.get(self.lease_key(subnet, ipv6_subnet).encode())
        return None if kv is None else self._decode(EventKind.PUT, kv).lease

    async def create_lease(
        self,
        subnet: IPv4Network,
        attrs: LeaseAttrs,
        ttl: int,
        ipv6_subnet: IPv6Network | None = None,
    ) -> Lease | None:
        """Write a new lease if the key does not exist; None if another node has it."""
        lease_id = await self._grant(ttl)
        return await self._write(
            Lease(subnet, attrs, ipv6_subnet), lease_id, mod_revision=0, ttl=ttl, fresh=True
        )

    async def _grant(self, ttl: int) -> int:
        if self.lease_ids is not None:
            for _ in range(GRANT_ATTEMPTS):
                try:
                    return (await self.client.grant(ttl, self.lease_ids()))[0]
                except EtcdError as e:
                    if "exists" not in str(e):
                        raise
        return (await self.client.grant(ttl))[0]

    async def replace_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int) -> Lease | None:
        """Take over ``old`` (ours from before a restart) with new attrs, if nobody touched it
        since it was read. A reservation (no etcd lease) stays a reservation."""
        if old.is_reservation:
            return await self._write(old.with_attrs(attrs), 0, mod_revision=old.mod_revision, ttl=0)
        lease_id = await self._grant(ttl)
        lease = await self._write(
            old.with_attrs(attrs), lease_id, mod_revision=old.mod_revision, ttl=ttl, fresh=True
        )
        if lease is not None:
            await self._revoke_if_unused(old.lease_id)
        return lease

    async def restore_lease(self, lease: Lease, over_revision: int) -> Lease | None:
        """Write ``lease`` again (same etcd lease) if the key is still at ``over_revision``."""
        return await self._write(lease, lease.lease_id, mod_revision=over_revision, ttl=lease.ttl)

    async def _write(
        self, lease: Lease, lease_id: int, *, mod_revision: int, ttl: int, fresh: bool = False
    ) -> Lease | None:
        """Write ``lease`` (its subnets name the key) attached to ``lease_id``."""
        key = (self.subnets_prefix + lease.key).encode()
        try:
            revision = await self.client.put_if(
                key, lease.attrs.to_json(), lease=lease_id, mod_revision=mod_revision
            )
        except BaseException:
            if fresh:
                await self.revoke_quietly(lease_id)
            raise
        if revision is None:
            if fresh:
                await self.revoke_quietly(lease_id)
            return None
        return replace(lease, lease_id=lease_id, mod_revision=revision, ttl=ttl)

    async def revoke_quietly(self, lease_id: int) -> None:
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

    async def keepalive(self, lease: Lease, timeout: float | None = None) -> int:
        """Refresh the etcd lease behind ``lease``; its TTL, or 0 if it is gone."""
        return await self.client.keepalive(lease.lease_id, timeout)

    async def delete_lease(self, lease: Lease) -> bool:
        """Delete ``lease`` only if it is unchanged since it was read."""
        return await self.client.delete_if(
            (self.subnets_prefix + lease.key).encode(), mod_revision=lease.mod_revision
        )

    async def watch_leases(self, start_revision: int) -> AsyncIterator[LeaseBatch]:
        async for resp in self.client.watch_prefix(self.subnets_prefix.encode(), start_revision):
            events = [self._decode(EventKind(ev.type), ev.kv) for ev in resp.events]
            yield LeaseBatch(resp.revision, events, resp.created)

    def _decode(self, kind: EventKind, kv: KeyValue) -> LeaseEvent:
        key = kv.key.decode(errors="replace")
        parsed = parse_subnet_key(key)
        if parsed is None:
            return LeaseEvent(kind, key, None, kv.mod_revision, problem="not a subnet key")
        subnet, ipv6_subnet = parsed
        if kind == EventKind.DELETE:
            return LeaseEvent(kind, key, subnet, kv.mod_revision)
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except LeaseDecodeError as e:
            return LeaseEvent(kind, key, subnet, kv.mod_revision, problem=f"bad value: {e}")
        lease = Lease(subnet, attrs, ipv6_subnet, lease_id=kv.lease, mod_revision=kv.mod_revision)
        return LeaseEvent(kind, key, subnet, kv.mod_revision, lease=lease)
