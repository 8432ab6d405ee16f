"""Runs in a node's namespace (started by bench/stretched.py): writes synthetic peer leases one
at a time through the given etcd member and times each until the node's route appears
(convergence_probe's sequential phase). Prints JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's pyflannel

from bench.convergence_probe import RouteEvents, sequential
from pyflannel.etcd.client import EtcdClient


async def main(endpoint: str, events: int, first: int) -> None:
    client = EtcdClient([endpoint], timeout=30)
    try:
        result = await sequential(client, RouteEvents(asyncio.get_running_loop()), first, events)
    finally:
        await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
