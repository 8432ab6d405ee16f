"""The etcd subnet manager against a real etcd: exact bytes, conditional writes (on the
revision read, which the manager keeps for each lease it hands out), the watch, compaction."""

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import ConfigNotFound
from pyflannel.etcd.client import EtcdClient, EtcdUnavailable
from pyflannel.subnet.event import EventKind
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.manager import LeaseChanges, LeaseSnapshot

ATTRS = LeaseAttrs(
    IPv4Address("198.51.100.1"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:01"},
)
SN = IPv4Network("10.1.5.0/24")


def leases_in_etcd(etcd_server) -> int:
    out = etcd_server.ctl("lease", "list").stdout
    return len([line for line in out.splitlines() if line.strip() and "lease" not in line.lower()])


async def test_missing_config_is_upstreams_message(store):
    with pytest.raises(ConfigNotFound, match="Did you create your config using etcdv3 API"):
        await store.network_config()


async def test_config_is_read_from_prefix_config(store, etcd_server, prefix):
    etcd_server.put(f"{prefix}/config", '{"Network": "10.9.0.0/16"}')
    assert await store.network_config() == b'{"Network": "10.9.0.0/16"}'


async def test_created_lease_has_exact_value_and_a_ttl(store, client, etcd_server, prefix):
    lease = await store.create_lease(SN, ATTRS, ttl=600)
    assert etcd_server.get(f"{prefix}/subnets/10.1.5.0-24") == (
        '{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}'
    )
    ttl, keys = await client.time_to_live(store.tokens.of(lease).lease_id, keys=True)
    assert 590 <= ttl <= 600
    assert keys == [f"{prefix}/subnets/10.1.5.0-24".encode()]


async def test_create_never_overwrites_and_leaves_no_orphan_etcd_lease(store, etcd_server):
    first = await store.create_lease(SN, ATTRS, ttl=600)
    before = leases_in_etcd(etcd_server)
    other = LeaseAttrs(IPv4Address("198.51.100.2"))
    assert await store.create_lease(SN, other, ttl=600) is None
    assert leases_in_etcd(etcd_server) == before  # the granted lease was revoked
    assert (await store.get_lease(SN)).attrs == first.attrs


async def test_replace_is_conditional_on_the_revision_read(store):
    old = await store.create_lease(SN, ATTRS, ttl=600)
    newer = await store.replace_lease(old, ATTRS, ttl=600)
    assert newer is not None
    assert store.tokens.of(newer).mod_revision > store.tokens.of(old).mod_revision
    assert newer == old  # equal leases (same attributes), read at different revisions
    # A second take-over based on the stale read must fail: someone wrote in between.
    assert await store.replace_lease(old, LeaseAttrs(IPv4Address("198.51.100.9")), ttl=600) is None
    assert (await store.get_lease(SN)).attrs == ATTRS


async def test_replace_revokes_the_previous_etcd_lease(store, client):
    old = await store.create_lease(SN, ATTRS, ttl=600)
    listed = await store.get_lease(SN)
    await store.replace_lease(listed, ATTRS, ttl=600)
    ttl, _ = await client.time_to_live(store.tokens.of(old).lease_id)
    assert ttl == -1  # gone, not left to linger for a day


async def test_a_reservation_stays_a_reservation(store, etcd_server, prefix):
    etcd_server.put(
        f"{prefix}/subnets/10.1.5.0-24", '{"PublicIP":"198.51.100.1","PublicIPv6":null}'
    )
    reserved = await store.get_lease(SN)
    assert reserved.reservation
    replaced = await store.replace_lease(reserved, ATTRS, ttl=600)
    assert replaced.reservation
    reread = await store.get_lease(SN)
    assert reread.reservation and store.tokens.of(reread).lease_id == 0


async def test_list_skips_junk_with_reasons_and_keeps_good_leases(store, etcd_server, prefix):
    await store.create_lease(SN, ATTRS, ttl=600)
    etcd_server.put(f"{prefix}/subnets/garbage", "{}")
    etcd_server.put(f"{prefix}/subnets/10.1.6.0-24", "not json")
    etcd_server.put(f"{prefix}/subnets/10.1.7.0-24", '{"PublicIP": 5}')
    etcd_server.put(f"{prefix}/subnets-old/10.1.8.0-24", '{"PublicIP":"1.2.3.4"}')
    snapshot = await store.leases()
    skipped = snapshot.skipped
    assert [str(le.subnet) for le in snapshot.leases] == ["10.1.5.0/24"]
    assert store.view().facts.revision > 0
    reasons = dict(skipped)
    assert reasons[f"{prefix}/subnets/garbage"] == "not a subnet key"
    assert "not JSON" in reasons[f"{prefix}/subnets/10.1.6.0-24"]
    assert "PublicIP" in reasons[f"{prefix}/subnets/10.1.7.0-24"]
    assert len(skipped) == 3  # the sibling prefix subnets-old/ is not ours


async def test_renewal_refreshes_and_reports_a_vanished_lease(store, client):
    lease = await store.create_lease(SN, ATTRS, ttl=30)
    assert 25 <= await store.renew_lease(lease) <= 30
    await client.revoke(store.tokens.of(lease).lease_id)
    assert await store.renew_lease(lease) == 0


async def test_delete_is_conditional(store):
    lease = await store.create_lease(SN, ATTRS, ttl=600)
    newer = await store.replace_lease(lease, ATTRS, ttl=600)
    assert not await store.delete_lease(lease)  # stale read: not deleted
    assert await store.delete_lease(newer)
    assert await store.get_lease(SN) is None


async def test_watch_delivers_every_event_of_a_transaction(store, client, prefix):
    watch = store.watch()
    assert isinstance(await watch.next(), LeaseSnapshot)
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
        while len(seen) < 100:
            update = await watch.next()
            assert isinstance(update, LeaseChanges)
            seen += update.events
    assert len(seen) == 100
    assert {str(e.subnet) for e in seen} == {f"10.1.{i}.0/24" for i in range(1, 101)}
    assert all(e.kind == "put" and e.lease is not None for e in seen)


async def test_watch_reports_deletions_and_junk_per_event(store, etcd_server, prefix):
    await store.create_lease(SN, ATTRS, ttl=600)
    watch = store.watch()
    await watch.next()  # the snapshot
    etcd_server.put(f"{prefix}/subnets/10.1.9.0-24", "junk")
    etcd_server.ctl("del", f"{prefix}/subnets/10.1.5.0-24")
    events = []
    async with asyncio.timeout(10):
        while len(events) < 2:
            events += (await watch.next()).events
    assert (events[0].kind, events[0].lease, "bad value" in events[0].problem) == (
        "put",
        None,
        True,
    )
    assert (events[1].kind, events[1].subnet) == ("delete", SN)


async def test_a_watch_whose_history_was_compacted_lists_again(store, client, prefix):
    first = await store.create_lease(SN, ATTRS, ttl=600)
    watch = store.watch()
    await watch.next()  # the snapshot: the stream is now after that revision
    latest = await store.replace_lease(first, ATTRS, ttl=600)
    await store.create_lease(IPv4Network("10.1.6.0/24"), ATTRS, ttl=600)
    await client.compact(store.tokens.of(latest).mod_revision + 1)
    async with asyncio.timeout(10):
        update = await watch.next()
        while not isinstance(update, LeaseSnapshot):  # (re)connected first, maybe
            update = await watch.next()
    await watch.close()
    assert "compacted up to revision" in update.reason and "(we were at " in update.reason
    assert sorted(str(le.subnet) for le in update.leases) == ["10.1.5.0/24", "10.1.6.0/24"]


async def test_events_older_than_this_nodes_own_write_are_marked_superseded(
    store, etcd_server, prefix
):
    """A deletion the watch delivers late (after this node wrote the lease again) is history
    to the lease keeper, not a loss."""
    watch = store.watch()
    await watch.next()
    first = await store.create_lease(SN, ATTRS, ttl=600)
    etcd_server.ctl("del", f"{prefix}/subnets/10.1.5.0-24")
    again = await store.create_lease(SN, ATTRS, ttl=600)
    assert again is not None and first is not again
    events = []
    async with asyncio.timeout(10):
        while len(events) < 3:
            events += (await watch.next()).events
    assert [(e.kind, e.superseded) for e in events] == [
        (EventKind.PUT, True),
        (EventKind.DELETE, True),
        (EventKind.PUT, True),
    ]


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


def test_the_etcd_client_runs_under_uvloop_too(etcd_server, prefix):
    # The daemon runs on the stdlib loop; the client must not depend on it (uvloop's
    # transports differ in how they report closed connections and timeouts).
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")

    async def scenario():
        client = EtcdClient([etcd_server.url], timeout=3)
        key = f"{prefix}/uvloop".encode()
        try:
            _, revision = await client.get(key)
            watch = client.watch_prefix(key, revision + 1)
            assert (await anext(watch)).created
            lease_id, ttl = await client.grant(60)
            revision = await client.put_if(key, b"v", lease=lease_id, mod_revision=0)
            assert revision is not None
            response = await anext(watch)
            assert [(e.type, e.kv.value) for e in response.events] == [("put", b"v")]
            assert await client.keepalive(lease_id) == ttl
            await client.revoke(lease_id)
            assert (await client.get(key))[0] is None
            await watch.aclose()
        finally:
            await client.close()

    uvloop.run(scenario())
