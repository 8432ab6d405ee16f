"""Runs inside a node's namespace (started by bench/scale.py): writes or deletes K synthetic
peer leases straight into etcd, 100 per transaction. Peers live in 10.0.0.0/12 with /26
subnets (room for 16,383) and public IPs from 198.18.0.0/15 (benchmarking addresses)."""

from __future__ import annotations

import asyncio
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's pyflannel

from pyflannel.etcd.client import EtcdClient
from pyflannel.subnet.lease import LeaseAttrs

NETWORK = IPv4Network("10.0.0.0/12")
SUBNET_LEN = 26
PREFIX = "/coreos.com/network/subnets/"


def peer(i: int) -> tuple[IPv4Network, bytes]:
    """The i-th synthetic peer (i >= 1; the node itself gets a low subnet of its own)."""
    subnet = IPv4Network((int(NETWORK.network_address) + (i + 16) * 64, SUBNET_LEN))
    ip = IPv4Address(int(IPv4Address("198.18.0.0")) + i)
    mac = ":".join(
        f"{b:02x}" for b in (0x02, 0xAA, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
    )
    value = LeaseAttrs(ip, backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac}).to_json()
    return subnet, value


async def main(endpoint: str, action: str, count: int) -> None:
    client = EtcdClient([endpoint], timeout=30)
    for start in range(1, count + 1, 100):
        puts, deletes = [], []
        for i in range(start, min(start + 100, count + 1)):
            subnet, value = peer(i)
            key = f"{PREFIX}{subnet.network_address}-{SUBNET_LEN}".encode()
            if action == "put":
                puts.append((key, value))
            else:
                deletes.append(key)
        await client.txn(puts, deletes, timeout=30)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
