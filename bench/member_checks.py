"""What the watch's member checks cost etcd: every pyflannel node whose lease watch is idle asks
its member for its status once a second (pyflannel/etcd/client.py, MEMBER_CHECK_INTERVAL), so
a cluster of N nodes sends N status requests a second. This runs one etcd and N simulated
nodes (the daemon's own client, idle watches and their checks, in one process) and reports
etcd's CPU against the same N watches with no checks.

    sudo python3 bench/member_checks.py [--nodes 100 300 1000] [--seconds 20]

Writes bench/results/member_checks.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, summary, table, write_results
from pyflannel.etcd import client as etcd_client
from pyflannel.etcd.client import EtcdClient
from testbed.etcd import EtcdServer

CLIENTS = 20  # node clients share these (each node's watch has its own connection anyway)


async def idle_watches(url: str, nodes: int, seconds: float, checks: bool) -> float:
    """Status requests per second etcd answered while ``nodes`` idle watches ran."""
    etcd_client.MEMBER_CHECK_INTERVAL = 1.0 if checks else 10 * seconds
    clients = [EtcdClient([url], timeout=5) for _ in range(CLIENTS)]
    counted = [0]
    for client in clients:
        status = client.status

        async def counting(*args, _status=status, **kwargs):
            counted[0] += 1
            return await _status(*args, **kwargs)

        client.status = counting  # type: ignore[method-assign]

    async def watch(client: EtcdClient) -> None:
        async for _ in client.watch_prefix(b"/bench/member-checks/", 0):
            pass

    tasks = [asyncio.create_task(watch(clients[i % CLIENTS])) for i in range(nodes)]
    await asyncio.sleep(2)  # all established, their first checks spread over a second
    before = counted[0]
    await asyncio.sleep(seconds)
    rate = (counted[0] - before) / seconds
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.close()
    return rate


def measure(server: EtcdServer, nodes: int, seconds: float, checks: bool) -> tuple[float, float]:
    pid = server.proc.pid
    c0, t0 = cpu_seconds(pid), time.monotonic()
    rate = asyncio.run(idle_watches(server.url, nodes, seconds, checks))
    cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
    return cpu, rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows, raw = [], {}
    with EtcdServer() as server:
        for nodes in args.nodes:
            samples: dict[str, list[float]] = {"off": [], "on": [], "rate": []}
            for _ in range(args.repeat):
                samples["off"].append(measure(server, nodes, args.seconds, False)[0])
                cpu, rate = measure(server, nodes, args.seconds, True)
                samples["on"].append(cpu)
                samples["rate"].append(rate)
            raw[nodes] = samples
            off, on = summary(samples["off"])["median"], summary(samples["on"])["median"]
            rows.append([nodes, summary(samples["rate"])["median"], off, on, on - off])
    text = table(
        [
            "idle nodes",
            "status checks/s",
            "etcd CPU %, watches only",
            "etcd CPU %, with checks",
            "the checks' CPU %",
        ],
        rows,
    )
    text += f"\n\n{args.seconds:g} s per sample, medians of {args.repeat}; etcd CPU of one core"
    print(text)
    write_results("member_checks", {"samples": raw}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
