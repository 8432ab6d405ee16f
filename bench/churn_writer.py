"""Runs in the bed's LAN namespace (started by testbed.churn): churns synthetic peer leases in
etcd at a steady rate, ``rate`` new ones and ``rate`` of the oldest removed every second once
``live`` exist, until ``seconds`` have passed; rides through etcd being killed (a failed write
is retried on the next tick: the writer, like an operator's tooling, keeps going). Prints
JSON: writes and deletions done, ticks that failed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's pyflannel

from pyflannel.errors import StoreError, StoreUnavailable
from pyflannel.etcd.client import EtcdClient
from pyflannel.subnet.lease import LeaseAttrs

PREFIX = "/coreos.com/network/subnets/"


def lease_value(n: int) -> bytes:
    ip = IPv4Address(int(IPv4Address("198.18.0.0")) + n)
    mac = f"02:cc:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}:01"
    return LeaseAttrs(ip, backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac}).to_json()


CYCLE = 3000  # subnets the churn cycles through (a /12 of /24s has 4,095)


def key(network: IPv4Network, n: int) -> bytes:
    subnet = IPv4Network((int(network.network_address) + (1 + n % CYCLE) * 256, 24))
    return f"{PREFIX}{subnet.network_address}-24".encode()


async def churn(endpoint: str, network: IPv4Network, rate: int, live: int, seconds: float):
    client = EtcdClient([endpoint], timeout=1)
    nodes = {kv.key for kv in (await client.get_prefix(PREFIX.encode()))[0]}  # never theirs
    alive: deque[bytes] = deque()
    written = deleted = failed_ticks = 0
    n = 0
    started = time.monotonic()
    tick = started
    try:
        while time.monotonic() - started < seconds:
            try:
                for _ in range(rate):
                    while key(network, n) in nodes:
                        n += 1
                    await client.put(key(network, n), lease_value(n % CYCLE))
                    alive.append(key(network, n))
                    n += 1
                    written += 1
                while len(alive) > live:
                    await client.delete(alive[0])
                    alive.popleft()
                    deleted += 1
            except (StoreUnavailable, StoreError):
                failed_ticks += 1
            tick += 1
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
    finally:
        await client.close()
    print(json.dumps({"written": written, "deleted": deleted, "failed_ticks": failed_ticks}))


if __name__ == "__main__":
    endpoint, network, rate, live, seconds = sys.argv[1:6]
    asyncio.run(churn(endpoint, IPv4Network(network), int(rate), int(live), float(seconds)))
