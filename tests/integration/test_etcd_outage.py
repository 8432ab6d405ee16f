"""etcd killed and restarted on the same data: the watch resumes without losing events and
the lease survives. Uses its own etcd server, since it kills it."""

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.control.peer_watch import RECONNECT_EVERY, PeerWatch
from pyflannel.etcd.client import MEMBER_CHECK_INTERVAL, EtcdClient, EtcdUnavailable
from pyflannel.etcd.store import EtcdSubnetManager
from pyflannel.subnet.table import LeaseTable
from testbed.etcd import EtcdServer
from tests.conftest import require_etcd

from .test_lease_keeper import attrs, keeper
from .test_peer_watch import NET, Peers, put

PREFIX = "/outage/network"


@pytest.fixture
def own_etcd():
    require_etcd()
    with EtcdServer() as server:
        yield server


async def test_watch_and_lease_survive_an_etcd_kill_and_restart(own_etcd):
    client = EtcdClient([own_etcd.url], timeout=2)
    store = EtcdSubnetManager(client, PREFIX)
    k = keeper(store)
    # Our own subnet chosen (previous=), not drawn: a draw of 10.1.2.0 or 10.1.3.0 (~1 in 128)
    # would be overwritten by the peers written below and read as our own, never as a peer.
    lease = await k.acquire(attrs("198.51.100.1"), previous=IPv4Network("10.1.1.0/24"))
    assert lease.subnet == IPv4Network("10.1.1.0/24")
    put(own_etcd, PREFIX, "10.1.2.0-24", "198.51.100.2")
    peers = Peers()
    watch = PeerWatch(store, LeaseTable(NET, own=lease.subnet), peers)
    task = asyncio.create_task(watch.run())
    try:
        await peers.wait_for({"10.1.2.0/24": "198.51.100.2"})
        own_etcd.kill()
        async with asyncio.timeout(10):  # the watch notices and starts retrying
            while watch.connected:
                await asyncio.sleep(0.05)
        own_etcd.start()
        # Written before the watch has reconnected: must still arrive.
        put(own_etcd, PREFIX, "10.1.3.0-24", "198.51.100.3")
        own_etcd.ctl("del", f"{PREFIX}/subnets/10.1.2.0-24")
        await peers.wait_for({"10.1.3.0/24": "198.51.100.3"}, timeout=20)
        assert watch.restarts >= 1
        assert watch.relists == 1  # resumed from its revision, no re-list needed
        # Renewal works again on the restarted server, and the lease is still ours.
        assert await k._renew() == ""
        stored = await store.get_lease(lease.subnet)
        assert stored.attrs.public_ip == IPv4Address("198.51.100.1")
    finally:
        task.cancel()
        await client.close()


async def test_renewal_retries_through_an_outage(own_etcd, caplog):
    client = EtcdClient([own_etcd.url], timeout=1)
    store = EtcdSubnetManager(client, PREFIX)
    k = keeper(store)
    await k.acquire(attrs("198.51.100.1"))
    own_etcd.kill()
    caplog.set_level(logging.DEBUG, logger="pyflannel.control.lease_keeper")
    renewal = asyncio.create_task(k._renew())
    async with asyncio.timeout(15):  # two failed tries at least
        while "still failing (2 tries)" not in caplog.text:
            await asyncio.sleep(0.05)
    assert not renewal.done()  # still retrying, not crashed, not given up
    own_etcd.start()
    assert await asyncio.wait_for(renewal, 20) == ""
    assert k.renewals == 1
    await client.close()


async def test_one_dead_member_moves_every_call_to_the_next_member_only(own_etcd, etcd_server):
    # Endpoints: the member that dies, a healthy one, and a dead address after it.
    client = EtcdClient([own_etcd.url, etcd_server.url, "http://127.0.0.1:9"], timeout=2)
    watch = client.watch_prefix(b"/failover/", 1)
    assert (await anext(watch)).created
    own_etcd.kill()
    # Both the watch and a unary call break on the same dead member ...
    with pytest.raises(EtcdUnavailable):
        await client.get(b"/failover/x")
    with pytest.raises(EtcdUnavailable):
        await anext(watch)
    # ... and together they move the client one step, to the healthy member.
    assert client.endpoint.url == etcd_server.url
    kv, revision = await client.get(b"/failover/x")
    assert kv is None and revision > 0
    await client.close()


async def test_a_frozen_member_breaks_the_watch_within_seconds(own_etcd):
    # SIGSTOP: the TCP connection stays up, only an unanswered status check reveals it
    # (MEMBER_CHECK_INTERVAL of silence, then MEMBER_CHECK_DEADLINE for the answer).
    client = EtcdClient([own_etcd.url], timeout=2)
    watch = client.watch_prefix(b"/frozen/", 1)
    assert (await anext(watch)).created
    own_etcd.pause()
    t0 = asyncio.get_running_loop().time()
    try:
        with pytest.raises(
            EtcdUnavailable, match=r"stopped answering its status check \(no answer within 2 s"
        ):
            await asyncio.wait_for(anext(watch), 40)
        assert asyncio.get_running_loop().time() - t0 < MEMBER_CHECK_INTERVAL + 2 + 1
    finally:
        own_etcd.resume()
        await client.close()


async def test_a_watch_survives_its_channel_being_closed_by_another_calls_failover(etcd_server):
    # One call failing over closes the channel; a watch on it must see a broken connection
    # (and resume), not be cancelled: a cancelled watch task would end silently.
    client = EtcdClient([etcd_server.url], timeout=2)
    watch = client.watch_prefix(b"/closed/", 1)
    assert (await anext(watch)).created
    pending = asyncio.create_task(anext(watch))
    await asyncio.sleep(0.2)
    await client.transport.failover(client.transport.generation)
    with pytest.raises(EtcdUnavailable, match="the client left this member"):
        await pending
    resumed = client.watch_prefix(b"/closed/", 1)
    assert (await anext(resumed)).created
    await client.close()


async def test_the_watch_is_back_at_once_after_a_long_outage_without_spinning(own_etcd):
    # A backoff grown during the outage would leave the watch seconds behind etcd's return;
    # it tries every RECONNECT_EVERY instead, which is no busy loop either.
    client = EtcdClient([own_etcd.url], timeout=2)
    store = EtcdSubnetManager(client, PREFIX)
    peers = Peers()
    watch = PeerWatch(store, LeaseTable(NET), peers)
    task = asyncio.create_task(watch.run())
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(watch.synced.wait(), 10)
        own_etcd.kill()
        async with asyncio.timeout(10):
            while watch.connected:
                await asyncio.sleep(0.05)
        tries_before, t0 = watch.restarts, loop.time()
        await asyncio.sleep(6)  # an exponential backoff would be at its cap by now
        tries = watch.restarts - tries_before
        away = loop.time() - t0
        assert away / RECONNECT_EVERY / 2 <= tries <= away / RECONNECT_EVERY * 1.5
        own_etcd.start()
        back = loop.time()
        put(own_etcd, PREFIX, "10.1.4.0-24", "198.51.100.4")
        await peers.wait_for({"10.1.4.0/24": "198.51.100.4"}, timeout=20)
        assert loop.time() - back < 1.5  # the put itself is an etcdctl process (~0.1 s)
    finally:
        task.cancel()
        await client.close()
