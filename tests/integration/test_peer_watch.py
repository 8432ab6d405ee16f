"""The peer watch against a real etcd: snapshot + events, compaction recovery, junk."""

import asyncio
from ipaddress import IPv4Address, IPv4Network

from pyflannel.control.peer_watch import PeerWatch
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.table import LeaseTable

NET = IPv4Network("10.1.0.0/16")
OWN = IPv4Network("10.1.1.0/24")


def value(ip: str) -> str:
    return (
        LeaseAttrs(
            IPv4Address(ip),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:09"},
        )
        .to_json()
        .decode()
    )


class Peers:
    """Collects what the watch reports, as the backend would see it."""

    def __init__(self):
        self.current: dict[str, str] = {}
        self.ignored: list[str] = []

    async def __call__(self, changes):
        for lease in changes.added:
            self.current[str(lease.subnet)] = str(lease.attrs.public_ip)
        for lease in changes.removed:
            self.current.pop(str(lease.subnet), None)
        self.ignored += [k for k, _ in changes.ignored]

    async def wait_for(self, expected: dict, timeout: float = 10):
        async with asyncio.timeout(timeout):
            while self.current != expected:
                await asyncio.sleep(0.02)


def put(etcd_server, prefix, subnet, ip):
    etcd_server.put(f"{prefix}/subnets/{subnet}", value(ip))


async def test_snapshot_then_events(store, etcd_server, prefix):
    put(etcd_server, prefix, "10.1.2.0-24", "198.51.100.2")
    put(etcd_server, prefix, "10.1.1.0-24", "198.51.100.1")  # our own
    peers = Peers()
    watch = PeerWatch(store, LeaseTable(NET, OWN), peers)
    task = asyncio.create_task(watch.run())
    try:
        await peers.wait_for({"10.1.2.0/24": "198.51.100.2"})
        put(etcd_server, prefix, "10.1.3.0-24", "198.51.100.3")
        etcd_server.ctl("del", f"{prefix}/subnets/10.1.2.0-24")
        await peers.wait_for({"10.1.3.0/24": "198.51.100.3"})
    finally:
        task.cancel()


async def test_junk_never_removes_peers(store, etcd_server, prefix):
    put(etcd_server, prefix, "10.1.2.0-24", "198.51.100.2")
    peers = Peers()
    task = asyncio.create_task(PeerWatch(store, LeaseTable(NET, OWN), peers).run())
    try:
        await peers.wait_for({"10.1.2.0/24": "198.51.100.2"})
        etcd_server.put(f"{prefix}/subnets/10.1.2.0-24x", "{")
        etcd_server.put(f"{prefix}/subnets/10.1.4.0-24", '{"PublicIP": []}')
        etcd_server.put(
            f"{prefix}/subnets/10.9.0.0-24", value("198.51.100.9")
        )  # outside the network
        put(etcd_server, prefix, "10.1.5.0-24", "198.51.100.5")
        await peers.wait_for({"10.1.2.0/24": "198.51.100.2", "10.1.5.0/24": "198.51.100.5"})
        assert len(peers.ignored) == 3
    finally:
        task.cancel()


async def test_compaction_while_disconnected_relists_and_converges(
    store, client, etcd_server, prefix
):
    for i in (2, 3, 4):
        put(etcd_server, prefix, f"10.1.{i}.0-24", f"198.51.100.{i}")
    peers = Peers()
    watch = PeerWatch(store, LeaseTable(NET, OWN), peers)
    task = asyncio.create_task(watch.run())
    await peers.wait_for({f"10.1.{i}.0/24": f"198.51.100.{i}" for i in (2, 3, 4)})
    task.cancel()  # the daemon is cut off from etcd ...
    # ... while leases change and etcd compacts the history it would need.
    etcd_server.ctl("del", f"{prefix}/subnets/10.1.2.0-24")
    put(etcd_server, prefix, "10.1.3.0-24", "198.51.100.33")
    put(etcd_server, prefix, "10.1.5.0-24", "198.51.100.5")
    _, revision = await client.get(b"/")
    await client.compact(revision)
    task = asyncio.create_task(watch.run())  # resumes from its old revision
    try:
        await peers.wait_for(
            {
                "10.1.3.0/24": "198.51.100.33",
                "10.1.4.0/24": "198.51.100.4",
                "10.1.5.0/24": "198.51.100.5",
            }
        )
        assert watch.relists == 2
    finally:
        task.cancel()
