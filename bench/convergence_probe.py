"""Runs inside a node's namespace (started by convergence.py): writes synthetic peer leases to
etcd and times, from each write, how long until the daemon's route for it appears (and, from
each deletion, until it is gone), watching netlink route events: one clock for both ends.
Three phases: sequential events, a burst of 100 in one transaction, 1,000 written at once.
Prints JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's pyflannel

from pyflannel.etcd.client import EtcdClient
from pyflannel.kernel.iproute import RTMGRP_IPV4_ROUTE, Notifications
from pyflannel.subnet.lease import LeaseAttrs

PROTO = 152
PREFIX = "/coreos.com/network/subnets/"
NETWORK = IPv4Network("10.0.0.0/12")


class RouteEvents:
    """Route add/remove events from the kernel, timestamped on arrival."""

    def __init__(self, loop, any_proto: bool = False):
        self.any_proto = any_proto  # upstream flanneld's routes carry no protocol of ours
        self.sock = Notifications(RTMGRP_IPV4_ROUTE)
        self.seen: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()
        loop.add_reader(self.sock.fileno(), self._read)

    def _read(self):
        now = time.perf_counter()
        for msg in self.sock.get():
            if msg.get("proto") != PROTO and not self.any_proto:
                continue
            kind = "add" if msg["event"] == "RTM_NEWROUTE" else "del"
            self.seen.setdefault((kind, f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"), now)
        self.changed.set()

    async def wait(self, kind: str, dsts: set[str], timeout: float) -> dict[str, float]:
        deadline = time.perf_counter() + timeout
        while True:
            found = {d: self.seen[(kind, d)] for d in dsts if (kind, d) in self.seen}
            if len(found) == len(dsts) or time.perf_counter() > deadline:
                return found
            self.changed.clear()
            try:
                await asyncio.wait_for(
                    self.changed.wait(), max(0.0, deadline - time.perf_counter())
                )
            except TimeoutError:
                pass


def lease(i: int) -> tuple[str, bytes, str]:
    subnet = IPv4Network((int(NETWORK.network_address) + i * 64, 26))
    mac = ":".join(f"{b:02x}" for b in (2, 0xBB, 0, (i >> 16) & 255, (i >> 8) & 255, i & 255))
    value = LeaseAttrs(
        IPv4Address(int(IPv4Address("198.18.0.0")) + i),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": mac},
    ).to_json()
    return f"{PREFIX}{subnet.network_address}-26", value, str(subnet)


def latencies(written: dict[str, float], seen: dict[str, float]) -> tuple[list[float], int]:
    return [(seen[d] - written[d]) * 1000 for d in written if d in seen], sum(
        d not in seen for d in written
    )


async def sequential(client, events, first: int, count: int) -> dict:
    add, delete, lost = [], [], 0
    for i in range(first, first + count):
        key, value, dst = lease(i)
        t0 = time.perf_counter()
        await client.put(key.encode(), value)
        got = await events.wait("add", {dst}, 5)
        add += [(got[dst] - t0) * 1000] if got else []
        t0 = time.perf_counter()
        await client.delete(key.encode())
        gone = await events.wait("del", {dst}, 5)
        delete += [(gone[dst] - t0) * 1000] if gone else []
        lost += (not got) + (not gone)
        await asyncio.sleep(0.01)
    return {"add_ms": add, "del_ms": delete, "lost": lost}


async def transaction_burst(client, events, first: int, count: int) -> dict:
    leases = [lease(i) for i in range(first, first + count)]
    t0 = time.perf_counter()
    await client.txn(puts=[(k.encode(), v) for k, v, _ in leases])
    got = await events.wait("add", {d for _, _, d in leases}, 20)
    add, lost_add = latencies({d: t0 for _, _, d in leases}, got)
    t0 = time.perf_counter()
    await client.txn(deletes=[k.encode() for k, _, _ in leases])
    gone = await events.wait("del", {d for _, _, d in leases}, 20)
    delete, lost_del = latencies({d: t0 for _, _, d in leases}, gone)
    return {
        "add_ms": add,
        "del_ms": delete,
        "lost": lost_add + lost_del,
        "all_added_ms": max(add, default=0),
        "all_deleted_ms": max(delete, default=0),
    }


async def concurrent_burst(clients, events, first: int, count: int) -> dict:
    leases = [lease(i) for i in range(first, first + count)]
    written: dict[str, float] = {}

    async def put(n: int, key: str, value: bytes, dst: str):
        written[dst] = time.perf_counter()
        await clients[n % len(clients)].put(key.encode(), value)

    t0 = time.perf_counter()
    await asyncio.gather(*(put(n, k, v, d) for n, (k, v, d) in enumerate(leases)))
    got = await events.wait("add", set(written), 60)
    add, lost_add = latencies(written, got)
    all_added = (max(got.values(), default=t0) - t0) * 1000
    deleted: dict[str, float] = {}

    async def delete(n: int, key: str, dst: str):
        deleted[dst] = time.perf_counter()
        await clients[n % len(clients)].delete(key.encode())

    t0 = time.perf_counter()
    await asyncio.gather(*(delete(n, k, d) for n, (k, _, d) in enumerate(leases)))
    gone = await events.wait("del", set(deleted), 60)
    delete_ms, lost_del = latencies(deleted, gone)
    return {
        "add_ms": add,
        "del_ms": delete_ms,
        "lost": lost_add + lost_del,
        "all_added_ms": all_added,
        "all_deleted_ms": (max(gone.values(), default=t0) - t0) * 1000,
    }


async def main(endpoint: str, sequential_events: int, any_proto: bool = False) -> None:
    clients = [EtcdClient([endpoint], timeout=30) for _ in range(8)]
    events = RouteEvents(asyncio.get_running_loop(), any_proto)
    result = {
        "sequential": await sequential(clients[0], events, 1000, sequential_events),
        "transaction_100": await transaction_burst(clients[0], events, 3000, 100),
        "concurrent_1000": await concurrent_burst(clients, events, 5000, 1000),
    }
    for c in clients:
        await c.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["any-proto"]))
