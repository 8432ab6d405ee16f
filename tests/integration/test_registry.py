"""The etcd schema against a real etcd: exact bytes, conditional writes, watch, compaction."""

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import ConfigNotFound, EtcdUnavailable, RevisionCompacted
from pyflannel.etcd.client import EtcdClient
from pyflannel.subnet.lease import LeaseAttrs

ATTRS = LeaseAttrs(
    IPv4Address("198.51.100.1"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:01"},
)
SN = IPv4Network("10.1.5.0/24")


def leases_in_etcd(etcd_server) -> int:
    out = etcd_server.ctl("lease", "list").stdout
    return len([line for line in out.splitlines() if line.strip() and "lease" not in line.lower()])


async def test_missing_config_is_upstreams_message(registry):
    with pytest.raises(ConfigNotFound, match="Did you create your config using etcdv3 API"):
        await registry.network_config()


async def test_config_is_read_from_prefix_config(registry, etcd_server, prefix):
    etcd_server.put(f"{prefix}/config", '{"Network": "10.9.0.0/16"}')
    assert await registry.network_config() == b'{"Network": "10.9.0.0/16"}'


async def test_created_lease_has_exact_value_and_a_ttl(registry, client, etcd_server, prefix):
    lease = await registry.create_lease(SN, ATTRS, ttl=600)
    assert etcd_server.get(f"{prefix}/subnets/10.1.5.0-24") == (
        '{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}'
    )
    ttl, keys = await client.time_to_live(lease.lease_id, keys=True)
    assert 590 <= ttl <= 600
    assert keys == [f"{prefix}/subnets/10.1.5.0-24".encode()]


async def test_create_never_overwrites_and_leaves_no_orphan_etcd_lease(registry, etcd_server):
    first = await registry.create_lease(SN, ATTRS, ttl=600)
    before = leases_in_etcd(etcd_server)
    other = LeaseAttrs(IPv4Address("198.51.100.2"))
    assert await registry.create_lease(SN, other, ttl=600) is None
    assert leases_in_etcd(etcd_server) == before  # the granted lease was revoked
    assert (await registry.get_lease(SN)).attrs == first.attrs


async def test_replace_is_conditional_on_the_revision_read(registry):
    old = await registry.create_lease(SN, ATTRS, ttl=600)
    newer = await registry.replace_lease(old, ATTRS, ttl=600)
    assert newer is not None and newer.mod_revision > old.mod_revision
    # A second take-over based on the stale read must fail: someone wrote in between.
    assert (
        await registry.replace_lease(old, LeaseAttrs(IPv4Address("198.51.100.9")), ttl=600) is None
    )
    assert (await registry.get_lease(SN)).attrs == ATTRS


async def test_replace_revokes_the_previous_etcd_lease(registry, client):
    old = await registry.create_lease(SN, ATTRS, ttl=600)
    listed = await registry.get_lease(SN)
    await registry.replace_lease(listed, ATTRS, ttl=600)
    ttl, _ = await client.time_to_live(old.lease_id)
    assert ttl == -1  # gone, not left to linger for a day


async def test_a_reservation_stays_a_reservation(registry, etcd_server, prefix):
    etcd_server.put(
        f"{prefix}/subnets/10.1.5.0-24", '{"PublicIP":"198.51.100.1","PublicIPv6":null}'
    )
    reserved = await registry.get_lease(SN)
    assert reserved.is_reservation
    replaced = await registry.replace_lease(reserved, ATTRS, ttl=600)
    assert replaced.is_reservation
    assert (await registry.get_lease(SN)).lease_id == 0


async def test_list_skips_junk_with_reasons_and_keeps_good_leases(registry, etcd_server, prefix):
    await registry.create_lease(SN, ATTRS, ttl=600)
    etcd_server.put(f"{prefix}/subnets/garbage", "{}")
    etcd_server.put(f"{prefix}/subnets/10.1.6.0-24", "not json")
    etcd_server.put(f"{prefix}/subnets/10.1.7.0-24", '{"PublicIP": 5}')
    etcd_server.put(f"{prefix}/subnets-old/10.1.8.0-24", '{"PublicIP":"1.2.3.4"}')
    leases, revision, skipped = await registry.list_leases()
    assert [str(le.subnet) for le in leases] == ["10.1.5.0/24"]
    assert revision > 0
    reasons = dict(skipped)
    assert reasons[f"{prefix}/subnets/garbage"] == "not a subnet key"
    assert "not JSON" in reasons[f"{prefix}/subnets/10.1.6.0-24"]
    assert "PublicIP" in reasons[f"{prefix}/subnets/10.1.7.0-24"]
    assert len(skipped) == 3  # the sibling prefix subnets-old/ is not ours


async def test_keepalive_refreshes_and_reports_a_vanished_lease(registry, client):
    lease = await registry.create_lease(SN, ATTRS, ttl=30)
    assert 25 <= await registry.keepalive(lease) <= 30
    await client.revoke(lease.lease_id)
    assert await registry.keepalive(lease) == 0


async def test_delete_is_conditional(registry):
    lease = await registry.create_lease(SN, ATTRS, ttl=600)
    newer = await registry.replace_lease(lease, ATTRS, ttl=600)
    assert not await registry.delete_lease(lease)  # stale read: not deleted
    assert await registry.delete_lease(newer)
    assert await registry.get_lease(SN) is None


async def test_watch_delivers_every_event_of_a_transaction(registry, client, prefix):
    _, revision, _ = await registry.list_leases()
    # 100 puts in one etcd transaction arrive as one watch response.

    await client.txn(
        puts=[
            (
                f"{prefix}/subnets/10.1.{i}.0-24".encode(),
                LeaseAttrs(IPv4Address(f"198.51.100.{i}")).to_json(),
            )
            for i in range(1, 101)
        ]
    )
    seen = []
    async with asyncio.timeout(10):
        async for batch in registry.watch_leases(revision + 1):
            seen += batch.events
            if len(seen) >= 100:
                break
    assert len(seen) == 100
    assert {str(e.subnet) for e in seen} == {f"10.1.{i}.0/24" for i in range(1, 101)}
    assert all(e.kind == "put" and e.lease is not None for e in seen)


async def test_watch_reports_deletions_and_junk_per_event(registry, etcd_server, prefix):
    lease = await registry.create_lease(SN, ATTRS, ttl=600)
    etcd_server.put(f"{prefix}/subnets/10.1.9.0-24", "junk")
    etcd_server.ctl("del", f"{prefix}/subnets/10.1.5.0-24")
    events = []
    async with asyncio.timeout(10):
        async for batch in registry.watch_leases(lease.mod_revision + 1):
            events += batch.events
            if len(events) >= 2:
                break
    assert (events[0].kind, events[0].lease, "bad value" in events[0].problem) == (
        "put",
        None,
        True,
    )
    assert (events[1].kind, events[1].subnet) == ("delete", SN)


async def test_watch_from_a_compacted_revision_raises(registry, client):
    first = await registry.create_lease(SN, ATTRS, ttl=600)
    latest = await registry.replace_lease(first, ATTRS, ttl=600)
    await client.compact(latest.mod_revision)
    with pytest.raises(RevisionCompacted) as e:
        async for _ in registry.watch_leases(first.mod_revision):
            pass
    assert e.value.compact_revision >= latest.mod_revision


async def test_unreachable_etcd_is_a_clear_retryable_error():
    client = EtcdClient(["http://127.0.0.1:9"], timeout=1)
    with pytest.raises(EtcdUnavailable, match=r"etcd at http://127.0.0.1:9: "):
        await client.get(b"/x")
    await client.close()


async def test_failover_to_the_next_endpoint(etcd_server):
    client = EtcdClient(["http://127.0.0.1:9", etcd_server.url], timeout=1)
    with pytest.raises(EtcdUnavailable):
        await client.get(b"/x")
    assert client.endpoint.url == etcd_server.url
    kv, revision = await client.get(b"/x")
    assert kv is None and revision > 0
    await client.close()
