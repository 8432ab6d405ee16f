"""Runs inside a node's namespace (started by convergence.py): writes synthetic peer leases to
etcd and times how long until the daemon's route for each appears (and disappears) in the
kernel, watching netlink route events. One clock for both ends. Prints JSON."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import IPRSocket
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE

from pyflannel.etcd.client import EtcdClient
from pyflannel.subnet.lease import LeaseAttrs

PROTO = 152


class RouteEvents:
    """Route add/remove events from the kernel, timestamped on arrival."""

    def __init__(self, loop):
        self.sock = IPRSocket()
        self.sock.bind(groups=RTMGRP_IPV4_ROUTE)
        self.seen: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()
        loop.add_reader(self.sock.fileno(), self._read)

    def _read(self):
        now = time.perf_counter()
        for msg in self.sock.get():
            if msg.get("proto") != PROTO:
                continue
            kind = "add" if msg["event"] == "RTM_NEWROUTE" else "del"
            dst = f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"
            self.seen.setdefault((kind, dst), now)
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


def value(i: int) -> bytes:
    mac = ":".join(["02"] + [f"{random.getrandbits(8):02x}" for _ in range(5)])
    return LeaseAttrs(
        IPv4Address(f"198.51.{101 + i // 250}.{1 + i % 250}"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": mac},
    ).to_json()


async def main(endpoint: str, prefix: str, count: int, first_octet: int) -> None:
    client = EtcdClient([endpoint])
    events = RouteEvents(asyncio.get_running_loop())
    add_ms, del_ms, lost = [], [], 0
    for i in range(count):
        subnet = IPv4Network(f"10.1.{first_octet + i}.0/24")
        key = f"{prefix}/subnets/{subnet.network_address}-24".encode()
        t0 = time.perf_counter()
        await client.put(key, value(i))
        got = await events.wait("add", {str(subnet)}, timeout=5)
        if got:
            add_ms.append((got[str(subnet)] - t0) * 1000)
        else:
            lost += 1
        t0 = time.perf_counter()
        await client.delete(key)
        got = await events.wait("del", {str(subnet)}, timeout=5)
        if got:
            del_ms.append((got[str(subnet)] - t0) * 1000)
        else:
            lost += 1
        await asyncio.sleep(0.05)
    await client.close()
    print(json.dumps({"add_ms": add_ms, "del_ms": del_ms, "lost": lost}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
