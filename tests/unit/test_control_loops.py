"""The control loops (lease keeper, peer watch, config watch) against the in-memory subnet
manager: the same behaviours the real-etcd tests prove (tests/integration), without etcd,
in milliseconds. Several managers on one MemoryStore are several nodes of one cluster."""

import asyncio
import contextlib
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.control.config_watch import ConfigWatch
from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.control.peer_watch import PeerWatch
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.memory import MemoryStore, MemorySubnetManager
from pyflannel.subnet.owner import LeaseConflict, NodeIdentity
from pyflannel.subnet.table import LeaseTable

NET = IPv4Network("10.1.0.0/16")
CONFIG = b'{"Network": "10.1.0.0/16", "SubnetLen": 24}'


def attrs(ip: str, mac: str = "02:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(ip), backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac}
    )


def keeper(manager, ip="198.51.100.1", cfg=CONFIG, ttl=600, changes=None, identity=None):
    network = parse_network_config(cfg)

    async def load():
        return network

    async def on_change(old, new):
        if changes is not None:
            changes.append((old, new))

    return LeaseKeeper(
        manager,
        public_ip=IPv4Address(ip),
        ttl=ttl,
        renew_margin=3600,
        load_config=load,
        on_change=on_change,
        identity=identity,
    )


async def eventually(check, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(*coroutines):
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def node_with_watch(store: MemoryStore, changes: list, identity=None):
    """A keeper fed by its peer watch (own-lease events, re-lists), as the daemon wires them."""
    manager = MemorySubnetManager(store)
    k = keeper(manager, changes=changes, identity=identity)
    lease = await k.acquire(attrs("198.51.100.1"))
    watch = PeerWatch(
        manager,
        LeaseTable(NET, own=lease.subnet),
        _ignore,
        on_own_event=k.notice,
        on_snapshot=k.verify,
        first_listing=k.last_listing,
    )
    async with running(watch.run(), k.run()) as tasks:
        await asyncio.wait_for(watch.synced.wait(), 5)
        yield k, lease, tasks[1]


async def _ignore(changes):
    pass


# -- the lease keeper ----------------------------------------------------------------------


async def test_a_restart_reuses_its_subnet_and_advertises_the_new_attributes():
    store = MemoryStore()
    first = await keeper(MemorySubnetManager(store)).acquire(attrs("198.51.100.1"))
    again = await keeper(MemorySubnetManager(store)).acquire(
        attrs("198.51.100.1", "02:00:00:00:00:02")
    )
    assert again.subnet == first.subnet
    stored = await MemorySubnetManager(store).get_lease(first.subnet)
    assert stored.attrs.backend_data["VtepMAC"] == "02:00:00:00:00:02"


async def test_thirty_nodes_acquiring_at_once_get_distinct_subnets():
    store = MemoryStore()
    cfg = b'{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMax": "10.1.40.0"}'
    keepers = [keeper(MemorySubnetManager(store), f"198.51.100.{i}", cfg) for i in range(1, 31)]
    leases = await asyncio.gather(*(k.acquire(attrs(str(k.public_ip))) for k in keepers))
    assert len({le.subnet for le in leases}) == 30
    listed = (await MemorySubnetManager(store).leases()).leases
    assert {str(le.subnet): str(le.attrs.public_ip) for le in listed} == {
        str(le.subnet): str(le.attrs.public_ip) for le in leases
    }


class Racing(MemorySubnetManager):
    """Another node writes the subnet this one chose just before this one's write (``races``
    times); counts the listings."""

    def __init__(self, store: MemoryStore, races: int):
        super().__init__(store)
        self.races, self.listings, self.lost = races, 0, []

    async def leases(self):
        self.listings += 1
        return await super().leases()

    async def create_lease(self, subnet, attrs_, ttl, ipv6_subnet=None, grantor=None):
        if self.races:
            self.races -= 1
            self.lost.append(subnet)
            await MemorySubnetManager(self.store).create_lease(subnet, attrs("198.51.100.99"), ttl)
        return await super().create_lease(subnet, attrs_, ttl, ipv6_subnet, grantor)


async def test_a_lost_creation_race_draws_again_from_the_same_listing():
    store = Racing(MemoryStore(), races=1)
    lease = await keeper(store).acquire(attrs("198.51.100.1"))
    assert store.listings == 1  # the race cost one write, not a new listing
    assert lease.subnet not in store.lost


async def test_a_second_lost_race_lists_again():
    store = Racing(MemoryStore(), races=2)
    lease = await keeper(store).acquire(attrs("198.51.100.1"))
    assert store.listings == 2
    assert lease.subnet not in store.lost and len(set(store.lost)) == 2


async def test_out_of_subnets_is_said_and_retried_until_one_frees(monkeypatch, caplog):
    monkeypatch.setattr("pyflannel.control.lease_keeper.OUT_OF_SUBNETS_RETRY", 0.05)
    store = MemoryStore()
    cfg = b'{"Network": "10.1.0.0/22", "SubnetLen": 24}'
    held = [
        await keeper(MemorySubnetManager(store), f"198.51.100.{i}", cfg).acquire(
            attrs(f"198.51.100.{i}")
        )
        for i in (1, 2, 3)
    ]
    caplog.set_level(logging.ERROR)
    waiting = asyncio.create_task(
        keeper(MemorySubnetManager(store), "198.51.100.4", cfg).acquire(attrs("198.51.100.4"))
    )
    await eventually(lambda: "out of subnets: all 3 /24 subnets of 10.1.0.0/22" in caplog.text)
    assert not waiting.done()
    store.delete(held[1].key)
    assert (await asyncio.wait_for(waiting, 5)).subnet == held[1].subnet


async def test_a_lease_deleted_behind_its_back_is_reacquired_and_the_change_reported():
    store, changes = MemoryStore(), []
    async with node_with_watch(store, changes) as (_, lease, _task):
        store.delete(lease.key)
        await eventually(lambda: changes)
    old, new = changes[0]
    assert old.subnet == new.subnet == lease.subnet
    assert store.records[lease.key].value == attrs("198.51.100.1").to_json()


async def test_a_subnet_taken_by_another_node_moves_this_one_without_a_fight():
    store, changes = MemoryStore(), []
    async with node_with_watch(store, changes) as (_, lease, _task):
        intruder = attrs("198.51.100.2", "02:00:00:00:00:02").to_json()
        store.put_raw(lease.key, intruder, ttl=600)
        await eventually(lambda: changes)
    old, new = changes[0]
    assert old.subnet == lease.subnet and new.subnet != lease.subnet
    assert store.records[lease.key].value == intruder  # the other node's, untouched


async def test_junk_over_its_lease_is_replaced_by_the_lease_and_nothing_else_changes():
    store, changes = MemoryStore(), []
    async with node_with_watch(store, changes) as (k, lease, _task):
        store.put_raw(lease.key, "{not json")
        await eventually(lambda: store.records[lease.key].value != b"{not json")
        assert store.records[lease.key].value == attrs("198.51.100.1").to_json()
        assert not changes and k.lease.subnet == lease.subnet


async def test_a_clone_rewriting_its_lease_stops_it_with_the_conflict():
    store, changes = MemoryStore(), []
    me = NodeIdentity(0x3333, vtep_mac="02:00:00:00:00:01")
    async with node_with_watch(store, changes, identity=me) as (_, lease, task):
        store.put_raw(lease.key, attrs("198.51.100.1", "02:00:00:00:00:99").to_json(), ttl=600)
        with pytest.raises(LeaseConflict, match=r"rewritten by another node.*02:00:00:00:00:99"):
            await asyncio.wait_for(task, 5)


async def test_renewal_retries_through_an_outage_and_carries_on(caplog):
    store = MemoryStore()
    k = keeper(MemorySubnetManager(store))
    await k.acquire(attrs("198.51.100.1"))
    store.fail()
    caplog.set_level(logging.DEBUG, logger="pyflannel.control.lease_keeper")
    renewal = asyncio.create_task(k._renew())
    await eventually(lambda: "still failing (2 tries)" in caplog.text, timeout=10)
    assert not renewal.done()
    assert "memory unreachable while renewing lease" in caplog.text
    store.recover()
    assert await asyncio.wait_for(renewal, 10) == ""
    assert k.renewals == 1


async def test_an_expired_lease_is_noticed_by_renewal_and_reacquired():
    store, changes = MemoryStore(), []
    k = keeper(MemorySubnetManager(store), changes=changes)
    lease = await k.acquire(attrs("198.51.100.1"))
    store.expire(lease.key)
    k.renew_at = 0  # renew now (the keeper's one timer)
    async with running(k.run()):
        await eventually(lambda: changes)
    assert changes[0][1].subnet == lease.subnet and lease.key in store.records


async def test_its_own_late_events_are_history_not_a_loss():
    """A deletion delivered after the node wrote its lease again must not make it give the
    lease up once more (the store marks such events superseded)."""
    store, changes = MemoryStore(), []
    manager = MemorySubnetManager(store)
    k = keeper(manager, changes=changes)
    lease = await k.acquire(attrs("198.51.100.1"))
    watch = manager.watch()
    await watch.next()  # the snapshot; the stream follows from here
    store.delete(lease.key)
    again = await manager.create_lease(lease.subnet, lease.attrs, 600)
    k._hold(again)
    update = await watch.next()
    assert [e.superseded for e in update.events] == [True, True]
    for event in update.events:
        k.notice(event)
    assert not k._pending  # nothing to act on


# -- the peer watch ------------------------------------------------------------------------


class Peers:
    def __init__(self):
        self.current: dict[str, str] = {}
        self.ignored: list[str] = []

    async def __call__(self, changes):
        for lease in changes.added:
            self.current[str(lease.subnet)] = str(lease.attrs.public_ip)
        for lease in changes.removed:
            self.current.pop(str(lease.subnet), None)
        self.ignored += [k for k, _ in changes.ignored]


def put(store: MemoryStore, subnet: str, ip: str) -> None:
    store.put_raw(subnet, attrs(ip, "02:00:00:00:00:09").to_json(), ttl=600)


async def test_the_watch_applies_a_snapshot_then_every_change_of_a_burst():
    store = MemoryStore()
    put(store, "10.1.2.0-24", "198.51.100.2")
    put(store, "10.1.1.0-24", "198.51.100.1")  # our own
    peers = Peers()
    watch = PeerWatch(
        MemorySubnetManager(store), LeaseTable(NET, IPv4Network("10.1.1.0/24")), peers
    )
    async with running(watch.run()):
        await eventually(lambda: peers.current == {"10.1.2.0/24": "198.51.100.2"})
        for i in range(3, 103):
            put(store, f"10.1.{i}.0-24", f"198.51.100.{i}")
        store.delete("10.1.2.0-24")
        await eventually(lambda: len(peers.current) == 100 and "10.1.2.0/24" not in peers.current)
    assert watch.relists == 1


async def test_junk_never_removes_a_peer():
    store = MemoryStore()
    put(store, "10.1.2.0-24", "198.51.100.2")
    peers = Peers()
    watch = PeerWatch(
        MemorySubnetManager(store), LeaseTable(NET, IPv4Network("10.1.1.0/24")), peers
    )
    async with running(watch.run()):
        await eventually(lambda: peers.current)
        store.put_raw("10.1.2.0-24", "{")
        store.put_raw("10.1.4.0-24", '{"PublicIP": []}')
        put(store, "10.1.5.0-24", "198.51.100.5")
        await eventually(lambda: "10.1.5.0/24" in peers.current)
    assert peers.current == {"10.1.2.0/24": "198.51.100.2", "10.1.5.0/24": "198.51.100.5"}
    assert peers.ignored == ["10.1.2.0-24", "10.1.4.0-24"]


async def test_an_outage_is_ridden_out_and_the_watch_resumes_without_a_relist():
    store = MemoryStore()
    put(store, "10.1.2.0-24", "198.51.100.2")
    peers = Peers()
    watch = PeerWatch(MemorySubnetManager(store), LeaseTable(NET), peers)
    async with running(watch.run()):
        await eventually(lambda: peers.current)
        store.fail()
        await eventually(lambda: not watch.connected)
        store.recover()
        put(store, "10.1.3.0-24", "198.51.100.3")
        await eventually(lambda: "10.1.3.0/24" in peers.current)
    assert watch.restarts >= 1 and watch.relists == 1 and watch.connected


async def test_forgotten_history_makes_the_watch_relist_and_converge(caplog):
    store = MemoryStore()
    for i in (2, 3, 4):
        put(store, f"10.1.{i}.0-24", f"198.51.100.{i}")
    peers = Peers()
    manager = MemorySubnetManager(store)
    watch = PeerWatch(manager, LeaseTable(NET), peers)
    caplog.set_level(logging.WARNING)
    async with running(watch.run()) as tasks:
        await eventually(lambda: len(peers.current) == 3)
        tasks[0].cancel()  # cut off ...
    store.delete("10.1.2.0-24")  # ... while leases change and the store forgets
    put(store, "10.1.3.0-24", "198.51.100.33")
    put(store, "10.1.5.0-24", "198.51.100.5")
    store.forget_history()
    async with running(watch.run()):
        await eventually(
            lambda: (
                peers.current
                == {
                    "10.1.3.0/24": "198.51.100.33",
                    "10.1.4.0/24": "198.51.100.4",
                    "10.1.5.0/24": "198.51.100.5",
                }
            )
        )
    assert watch.relists == 2 and "re-listing all leases" in caplog.text


# -- the config watch ----------------------------------------------------------------------


async def test_a_changed_config_is_said_once_and_kept_for_status(caplog):
    store = MemoryStore(config=CONFIG)
    watch = ConfigWatch(MemorySubnetManager(store), parse_network_config(CONFIG), 0.01)
    caplog.set_level(logging.INFO)
    async with running(watch.run()):
        store.config = b'{"Network": "10.2.0.0/16", "SubnetLen": 24}'
        await eventually(lambda: watch.change)
        await asyncio.sleep(0.05)
        store.config = b'{"Network": "10.2.0.0/16", "SubnetLen": 99}'
        await eventually(lambda: "unusable" in watch.change)
        store.config = CONFIG
        await eventually(lambda: not watch.change)
    assert caplog.text.count("changed: ") == 1
    assert "is again the one this daemon runs with" in caplog.text


# -- stopping: a cancellation is never lost ---------------------------------------------------


class _Repairs:
    """A backend for the reconcile loop: every pass succeeds."""

    def __init__(self):
        self.repair_wanted = asyncio.Event()
        self.passes = 0

    async def reconcile(self):
        from pyflannel.backend.reconciler import ReconcileReport

        self.passes += 1
        return ReconcileReport()


async def test_the_reconcile_loop_stops_when_cancelled_as_damage_is_reported():
    """Damage reported and the daemon stopping in the same instant (SIGTERM during a repair
    burst): Python 3.11's wait_for returned the event and lost the cancellation, so the loop
    ran on and the daemon never exited (seen as a hung test of the daemon's wiring)."""
    from pyflannel.control.reconciling import ReconcileLoop

    backend = _Repairs()
    loop = ReconcileLoop(backend, interval=30)  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    await loop.programmed.wait()
    await asyncio.sleep(0.01)  # waiting for damage now
    backend.repair_wanted.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def test_the_lease_keeper_stops_when_cancelled_as_it_is_woken():
    k = keeper(MemorySubnetManager(MemoryStore(config=CONFIG)))
    await k.acquire(attrs("198.51.100.1"))
    task = asyncio.create_task(k.run())
    await asyncio.sleep(0.01)  # waiting for its renewal time now
    k._alarm.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()
