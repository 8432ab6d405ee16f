"""Runs in the bed's LAN namespace (started by bench/keepers.py): N lease keepers — the daemon's
own LeaseKeeper, many per process over a few etcd clients — boot at once against etcd. Times
until every keeper holds a lease, counts the races lost and the requests made, then a renewal
round: the events one watcher of the subnets receives (pyflannel renews with keepalives), and
the same round as upstream renews (it re-puts every key with a new lease). Prints JSON."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's pyflannel

from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.etcd.client import EtcdClient
from pyflannel.etcd.store import EtcdSubnetManager
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import LeaseAttrs

CONFIG = '{"Network": "10.0.0.0/12", "SubnetLen": 26}'
PREFIX = "/coreos.com/network"


class Races(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "taken by another node meanwhile" in record.getMessage():
            self.lost += 1


NODE: contextvars.ContextVar[int] = contextvars.ContextVar("node", default=-1)


def counted(client: EtcdClient, counter: list[int], per_node: dict[int, int]) -> EtcdClient:
    """Count every request, in total and for the node (keeper) whose task makes it (every
    unary call goes through the client's transport)."""
    call = client.transport.unary

    async def counting(*args, **kwargs):
        counter[0] += 1
        node = NODE.get()
        per_node[node] = per_node.get(node, 0) + 1
        return await call(*args, **kwargs)

    client.transport.unary = counting  # type: ignore[method-assign]
    return client


async def watch_count(client: EtcdClient, prefix: bytes, revision: int, stop: asyncio.Event):
    seen = 0
    async for resp in client.watch_prefix(prefix, revision):
        seen += len(resp.events)
        if stop.is_set():
            break
    return seen


async def events_during(client, store, action) -> int:
    """Events one watcher of the subnets sees while ``action`` runs (and 1 s after)."""
    _, revision = await client.get(store.config_key.encode())
    stop = asyncio.Event()
    watcher = asyncio.create_task(
        watch_count(client, store.subnets_prefix.encode(), revision + 1, stop)
    )
    await action()
    await asyncio.sleep(1)
    stop.set()
    # a progress notification or a last event ends the watch loop; a marker put makes sure
    await client.put(store.subnets_prefix.encode() + b"zz-end-marker", b"{}")
    seen = await asyncio.wait_for(watcher, 30)
    await client.delete(store.subnets_prefix.encode() + b"zz-end-marker")
    return seen - 1  # the marker


async def main(endpoints: str, nodes: int, clients_n: int) -> None:
    races = Races()
    logging.getLogger("pyflannel").addHandler(races)
    logging.getLogger("pyflannel").setLevel(logging.INFO)
    requests = [0]
    per_node: dict[int, int] = {}
    clients = [
        counted(EtcdClient(endpoints.split(","), timeout=10), requests, per_node)
        for _ in range(clients_n)
    ]
    cfg = parse_network_config(CONFIG)

    async def load():
        return cfg

    async def on_change(old, new):
        pass

    keepers = [
        LeaseKeeper(
            EtcdSubnetManager(clients[i % clients_n], PREFIX),
            public_ip=IPv4Address(int(IPv4Address("198.18.0.0")) + i + 1),
            ttl=3600,
            renew_margin=600,
            load_config=load,
            on_change=on_change,
        )
        for i in range(nodes)
    ]
    done: list[float] = []
    t0 = time.perf_counter()

    async def boot(n: int, k: LeaseKeeper):
        NODE.set(n)
        attrs = LeaseAttrs(
            k.public_ip,
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:01"},
        )
        await k.acquire(attrs)
        done.append(time.perf_counter() - t0)

    await asyncio.gather(*(boot(n, k) for n, k in enumerate(keepers)))
    all_held = time.perf_counter() - t0
    boot_requests = requests[0]
    counts = sorted(per_node.get(n, 0) for n in range(nodes))
    subnets = {k.held.subnet for k in keepers}
    stores: list[EtcdSubnetManager] = [k.store for k in keepers]  # type: ignore[misc]
    pyflannel_round = await events_during(
        clients[0],
        stores[0],
        lambda: asyncio.gather(*(k.store.renew_lease(k.held) for k in keepers)),
    )

    async def upstream_round():  # what upstream's renewal does: a new lease, the key re-put
        async def renew(k):
            lease_id, _ = await k.store.client.grant(3600)
            await k.store.client.put(
                (k.store.subnets_prefix + k.held.key).encode(),
                k.held.attrs.to_json(),
                lease=lease_id,
            )

        await asyncio.gather(*(renew(k) for k in keepers))

    upstream_round_events = await events_during(clients[0], stores[0], upstream_round)
    for c in clients:
        await c.close()
    done.sort()
    print(
        json.dumps(
            {
                "nodes": nodes,
                "clients": clients_n,
                "all_held_s": all_held,
                "median_held_s": done[len(done) // 2],
                "distinct_subnets": len(subnets),
                "races_lost": races.lost,
                "requests_per_node": boot_requests / nodes,
                "requests_per_node_median": counts[nodes // 2],
                "requests_per_node_p99": counts[int(0.99 * (nodes - 1))],
                "races_lost_per_node": races.lost / nodes,
                "events_per_watcher_per_renewal_round": {
                    "pyflannel": pyflannel_round,
                    "upstream": upstream_round_events,
                },
                "timeline_s": [
                    done[int(q * (len(done) - 1))] for q in (0, 0.25, 0.5, 0.75, 0.9, 0.99, 1)
                ],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
