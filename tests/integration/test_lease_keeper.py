"""Acquiring and keeping a lease against a real etcd: reuse, races, exhaustion, renewal, loss."""

import asyncio
import contextlib
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.control.peer_watch import PeerWatch
from pyflannel.etcd.client import EtcdClient
from pyflannel.etcd.store import EtcdSubnetManager
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.table import LeaseTable

from .conftest import network


def attrs(ip: str, mac: str = "02:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(ip), backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac}
    )


def keeper(store, ip="198.51.100.1", cfg=None, ttl=600, changes=None, identity=None) -> LeaseKeeper:
    cfg = cfg or network()

    async def load():
        return cfg

    async def on_change(old, new):
        if changes is not None:
            changes.append((old, new))

    return LeaseKeeper(
        store,
        public_ip=IPv4Address(ip),
        ttl=ttl,
        renew_margin=3600,
        load_config=load,
        on_change=on_change,
        identity=identity,
    )


async def test_first_acquire_allocates_and_a_restart_reuses_it_with_new_attrs(store):
    first = await keeper(store).acquire(attrs("198.51.100.1", "02:00:00:00:00:01"))
    again = await keeper(store).acquire(attrs("198.51.100.1", "02:00:00:00:00:02"))
    assert again.subnet == first.subnet
    stored = await store.get_lease(first.subnet)
    assert stored.attrs.backend_data["VtepMAC"] == "02:00:00:00:00:02"


async def test_previous_subnet_from_subnet_file_is_reused(store):
    lease = await keeper(store).acquire(attrs("198.51.100.1"), previous=IPv4Network("10.1.77.0/24"))
    assert lease.subnet == IPv4Network("10.1.77.0/24")


async def test_thirty_concurrent_acquirers_in_forty_subnets_get_distinct_subnets(
    etcd_server, prefix
):
    cfg = network('{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMax": "10.1.40.0"}')
    clients = [EtcdClient([etcd_server.url]) for _ in range(30)]
    try:
        keepers = [
            keeper(EtcdSubnetManager(c, prefix), f"198.51.100.{i + 1}", cfg)
            for i, c in enumerate(clients)
        ]
        leases = await asyncio.gather(*(k.acquire(attrs(str(k.public_ip))) for k in keepers))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert len({le.subnet for le in leases}) == 30
    listed = (await EtcdSubnetManager(EtcdClient([etcd_server.url]), prefix).leases()).leases
    assert sorted(str(le.subnet) for le in listed) == sorted(str(le.subnet) for le in leases)
    owners = {str(le.subnet): str(le.attrs.public_ip) for le in listed}
    assert owners == {str(le.subnet): str(le.attrs.public_ip) for le in leases}


async def test_out_of_subnets_is_logged_clearly_and_retried_until_one_frees(
    store, caplog, monkeypatch
):
    monkeypatch.setattr("pyflannel.control.lease_keeper.OUT_OF_SUBNETS_RETRY", 0.2)
    cfg = network('{"Network": "10.1.0.0/22", "SubnetLen": 24}')  # 3 subnets
    held = [
        await keeper(store, f"198.51.100.{i}", cfg).acquire(attrs(f"198.51.100.{i}"))
        for i in (1, 2, 3)
    ]
    caplog.set_level(logging.ERROR)
    waiting = asyncio.create_task(keeper(store, "198.51.100.4", cfg).acquire(attrs("198.51.100.4")))
    async with asyncio.timeout(10):
        while "out of subnets" not in caplog.text:
            await asyncio.sleep(0.05)
    assert not waiting.done()
    assert "out of subnets: all 3 /24 subnets of 10.1.0.0/22" in caplog.text
    await store.delete_lease(held[1])
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.subnet == held[1].subnet


async def test_renewal_keeps_a_short_lease_alive_past_its_ttl(store, client):
    k = keeper(store, ttl=3)
    lease = await k.acquire(attrs("198.51.100.1"))
    task = asyncio.create_task(k.run())
    try:
        async with asyncio.timeout(15):  # renewals every third of the TTL: past the TTL
            while k.renewals < 4:
                await asyncio.sleep(0.1)
        ttl, _ = await client.time_to_live(store.tokens.of(lease).lease_id)
        assert ttl > 0
        assert k.renewals >= 4
        assert await store.get_lease(lease.subnet) is not None
    finally:
        task.cancel()


async def first_change(changes: list, timeout: float = 5):
    """The first (old, new) the keeper reported through on_change."""
    async with asyncio.timeout(timeout):
        while not changes:
            await asyncio.sleep(0.05)
    return changes[0]


async def run_with_watch(store, k):
    """A keeper plus the peer watch that feeds it its own-key events, as in the daemon."""
    table = LeaseTable(network().network, own=k.lease.subnet)

    async def ignore(_):
        pass

    watch = PeerWatch(store, table, ignore, on_own_event=k.notice, on_snapshot=k.verify)
    return [asyncio.create_task(watch.run()), asyncio.create_task(k.run())], watch


async def test_lease_deleted_behind_our_back_is_reacquired_with_the_same_subnet(
    store, etcd_server, prefix
):
    changes = []
    k = keeper(store, changes=changes)
    lease = await k.acquire(attrs("198.51.100.1"))
    tasks, watch = await run_with_watch(store, k)
    try:
        await watch.synced.wait()
        etcd_server.ctl("del", f"{prefix}/subnets/{lease.key}")
        old, new = await first_change(changes)
        assert old.subnet == new.subnet == lease.subnet
        assert (await store.get_lease(lease.subnet)).attrs.public_ip == IPv4Address("198.51.100.1")
    finally:
        for t in tasks:
            t.cancel()


async def test_subnet_taken_by_another_node_moves_us_to_a_new_one_without_a_fight(
    store, etcd_server, prefix
):
    changes = []
    k = keeper(store, changes=changes)
    lease = await k.acquire(attrs("198.51.100.1"))
    tasks, watch = await run_with_watch(store, k)
    try:
        await watch.synced.wait()
        intruder = attrs("198.51.100.2", "02:00:00:00:00:02").to_json().decode()
        etcd_server.put(f"{prefix}/subnets/{lease.key}", intruder)
        old, new = await first_change(changes)
        assert old.subnet == lease.subnet and new.subnet != lease.subnet
        # The other node's lease is untouched.
        assert etcd_server.get(f"{prefix}/subnets/{lease.key}") == intruder
        assert (await store.get_lease(new.subnet)).attrs.public_ip == IPv4Address("198.51.100.1")
    finally:
        for t in tasks:
            t.cancel()


async def test_expired_lease_is_noticed_by_renewal_and_reacquired(store, client):
    changes = []
    k = keeper(store, ttl=600, changes=changes)
    lease = await k.acquire(attrs("198.51.100.1"))
    await client.revoke(store.tokens.of(lease).lease_id)  # as if it expired while cut off
    k.renew_at = 0  # renew now (the keeper's one timer)
    task = asyncio.create_task(k.run())
    try:
        assert (await first_change(changes))[1].subnet == lease.subnet
        assert await store.get_lease(lease.subnet) is not None
    finally:
        task.cancel()


async def test_fifty_racers_for_forty_subnets_never_share_one_and_losers_wait(
    etcd_server, prefix, monkeypatch, caplog
):
    monkeypatch.setattr("pyflannel.control.lease_keeper.OUT_OF_SUBNETS_RETRY", 0.3)
    cfg = network('{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMax": "10.1.40.0"}')
    clients = [EtcdClient([etcd_server.url]) for _ in range(50)]
    caplog.set_level(logging.ERROR)
    keepers = [
        keeper(EtcdSubnetManager(c, prefix), f"198.51.100.{i + 1}", cfg)
        for i, c in enumerate(clients)
    ]
    tasks = [asyncio.create_task(k.acquire(attrs(str(k.public_ip)))) for k in keepers]
    try:
        async with asyncio.timeout(30):
            while sum(t.done() for t in tasks) < 40:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        winners = [t.result() for t in tasks if t.done()]
        assert len(winners) == 40 and len({le.subnet for le in winners}) == 40
        assert "out of subnets: all 40 /24 subnets of 10.1.0.0/16" in caplog.text
        observer = EtcdSubnetManager(clients[0], prefix)
        assert len((await observer.leases()).leases) == 40
        # A node leaves: exactly one waiting racer gets its subnet.
        gone = winners[0]
        await observer.delete_lease(await observer.get_lease(gone.subnet))
        async with asyncio.timeout(10):
            while sum(t.done() for t in tasks) < 41:
                await asyncio.sleep(0.1)
        newcomer = next(t.result() for t in tasks if t.done() and t.result() not in winners)
        assert newcomer.subnet == gone.subnet
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.close() for c in clients))


async def test_new_attrs_and_a_verify_before_the_loop_runs_both_happen(store):
    """The lost wake-up: change_attrs() then verify() used to leave only "verify", which
    compared etcd with the old attributes and passed; the new public IP was never sent."""
    k = keeper(store)
    lease = await k.acquire(attrs("198.51.100.1"))
    k.change_attrs(attrs("198.51.100.9"))
    k.verify()
    task = asyncio.create_task(k.run())
    try:
        async with asyncio.timeout(10):
            while (await store.get_lease(lease.subnet)).attrs.public_ip != IPv4Address(
                "198.51.100.9"
            ):
                await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        task.cancel()


def identity(fingerprint: int, mac: str = "02:00:00:00:00:01"):
    from pyflannel.subnet.owner import NodeIdentity

    return NodeIdentity(fingerprint, vtep_mac=mac)


async def test_a_node_with_the_same_public_ip_does_not_take_the_first_ones_lease(
    etcd_server, prefix
):
    import pytest

    from pyflannel.subnet.owner import LeaseConflict

    first_id, second_id = (
        identity(0x1111, "02:00:00:00:00:01"),
        identity(0x2222, "02:00:00:00:00:02"),
    )
    first_store = EtcdSubnetManager(EtcdClient([etcd_server.url]), prefix)
    second_store = EtcdSubnetManager(EtcdClient([etcd_server.url]), prefix)
    first = await keeper(first_store, identity=first_id).acquire(attrs("198.51.100.1"))
    assert first_store.tokens.of(first).lease_id >> 23 == 0x1111  # with its fingerprint
    assert first.grantor == 0x1111
    with pytest.raises(LeaseConflict) as e:
        await keeper(second_store, identity=second_id).acquire(
            attrs("198.51.100.1", "02:00:00:00:00:02")
        )
    assert "VTEP MAC 02:00:00:00:00:01" in str(e.value) and "--public-ip" in str(e.value)
    stored = await first_store.get_lease(first.subnet)
    assert stored.attrs.backend_data["VtepMAC"] == "02:00:00:00:00:01"  # untouched
    # The same node after a reboot (new device MAC, no subnet file): its fingerprint says so.
    again = await keeper(first_store, identity=identity(0x1111, "02:00:00:00:00:03")).acquire(
        attrs("198.51.100.1", "02:00:00:00:00:03")
    )
    assert again.subnet == first.subnet


@contextlib.asynccontextmanager
async def keeping(etcd_server, prefix, fingerprint: int):
    """A node's lease keeper with this fingerprint, running with its peer watch (as in the
    daemon): yields (keeper, store, lease, keeper task)."""
    me = identity(fingerprint)
    store = EtcdSubnetManager(EtcdClient([etcd_server.url]), prefix)
    k = keeper(store, identity=me)
    lease = await k.acquire(attrs("198.51.100.1"))

    async def peers_changed(changes):
        pass

    watch = PeerWatch(
        store,
        LeaseTable(network().network, own=lease.subnet),
        peers_changed,
        on_own_event=k.notice,
    )
    tasks = [asyncio.create_task(k.run()), asyncio.create_task(watch.run())]
    try:
        await asyncio.wait_for(watch.synced.wait(), 10)
        yield k, store, lease, tasks[0]
    finally:
        for t in tasks:
            t.cancel()


async def test_a_node_whose_lease_is_rewritten_by_another_with_its_ip_stops_with_the_conflict(
    etcd_server, prefix, client
):
    import pytest

    from pyflannel.subnet.owner import LeaseConflict

    async with keeping(etcd_server, prefix, 0x3333) as (_, store, lease, task):
        # What upstream flanneld on a clone does: rewrite the lease of "its" public IP.
        other = attrs("198.51.100.1", "02:00:00:00:00:99").to_json()
        lease_id, _ = await client.grant(600)
        await client.put(store.key(lease.subnet).encode(), other, lease=lease_id)
        with pytest.raises(LeaseConflict, match=r"rewritten by another node.*02:00:00:00:00:99"):
            await asyncio.wait_for(task, 10)


async def test_a_lease_turned_into_a_reservation_while_running_is_not_renewed(
    etcd_server, prefix, client
):
    async with keeping(etcd_server, prefix, 0x4444) as (k, store, lease, task):
        await client.put(store.key(lease.subnet).encode(), attrs("198.51.100.1").to_json())
        async with asyncio.timeout(10):
            while not k.lease.reservation:
                await asyncio.sleep(0.05)
        assert k.renew_at == float("inf") and not task.done()


DUAL = '{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd10::/48"}'


async def test_a_dual_stack_lease_holds_both_subnets_and_a_restart_keeps_them(store):
    from ipaddress import IPv6Network

    cfg = network(DUAL)
    first = await keeper(store, cfg=cfg).acquire(attrs("198.51.100.1"))
    assert first.ipv6_subnet is not None and first.ipv6_subnet.subnet_of(IPv6Network("fd10::/48"))
    assert first.key == f"{first.subnet.network_address}-24&{first.ipv6_subnet.network_address}-64"
    again = await keeper(store, cfg=cfg).acquire(attrs("198.51.100.1", "02:00:00:00:00:09"))
    assert (again.subnet, again.ipv6_subnet) == (first.subnet, first.ipv6_subnet)
    stored = await store.get_lease(first.subnet, first.ipv6_subnet)
    assert stored.attrs.backend_data["VtepMAC"] == "02:00:00:00:00:09"
    # The same subnets after the lease was lost (previous subnets from the subnet file).
    await store.delete_lease(stored)
    back = await keeper(store, cfg=cfg).acquire(
        attrs("198.51.100.1"), previous=first.subnet, previous6=first.ipv6_subnet
    )
    assert (back.subnet, back.ipv6_subnet) == (first.subnet, first.ipv6_subnet)


@pytest.mark.parametrize(
    "config",
    [
        '"Network": "10.1.0.0/16", "IPv6Network": "fd10::/62", "IPv6SubnetLen": 64',
        '"Network": "10.1.0.0/22", "IPv6Network": "fd10::/48"',
    ],
    ids=["ipv6", "ipv4"],
)
async def test_two_nodes_that_pick_one_half_at_once_end_with_distinct_ones(
    etcd_server, prefix, config
):
    """Keys differ when the other halves differ, so both creations succeed: the node whose
    key was created later sees the earlier one and chooses again (a network with room for
    only two or three subnets of that family makes the collision likely)."""
    cfg = network(f'{{"EnableIPv6": true, {config}}}')
    for _ in range(10):
        clients = [EtcdClient([etcd_server.url]) for _ in range(2)]
        try:
            leases = await asyncio.gather(
                *(
                    keeper(EtcdSubnetManager(c, prefix), f"198.51.100.{i + 1}", cfg).acquire(
                        attrs(f"198.51.100.{i + 1}")
                    )
                    for i, c in enumerate(clients)
                )
            )
            assert leases[0].ipv6_subnet != leases[1].ipv6_subnet
            assert leases[0].subnet != leases[1].subnet
            observer = EtcdSubnetManager(clients[0], prefix)
            listed = (await observer.leases()).leases
            assert sorted(le.key for le in listed) == sorted(le.key for le in leases)
            for lease in listed:
                await observer.delete_lease(lease)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
