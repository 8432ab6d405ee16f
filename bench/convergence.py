"""Lease-to-kernel convergence: how long from a peer's lease being written to etcd until the
node's route for it exists (route is programmed last, after neighbour and FDB), and from
its deletion until the route is gone.

    sudo python3 bench/convergence.py [--events 50] [--peers 3]

Builds a namespace test bed with real daemons, runs bench/convergence_probe.py inside node 1
(it writes synthetic leases straight into etcd and watches netlink), and writes
bench/results/convergence.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, write_results
from pyflannel.testbed.bed import TestBed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--peers", type=int, default=3, help="real daemons in the bed")
    args = parser.parse_args()
    with TestBed(hosts=args.peers) as bed:
        bed.put_config()
        for node in bed.nodes:
            node.start()
        for node in bed.nodes:
            node.wait_ready()
        probe = Path(__file__).with_name("convergence_probe.py")
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                bed.nodes[0].ns,
                sys.executable,
                str(probe),
                bed.etcd.url,
                "/coreos.com/network",
                str(args.events),
                "150",
            ],
            capture_output=True,
            text=True,
            timeout=60 + args.events,
            check=True,
        ).stdout
        result = json.loads(out)
    add, delete = summary(result["add_ms"]), summary(result["del_ms"])
    rows = [
        ["lease written -> route present", add["n"], add["median"], add["p99"], add["max"]],
        [
            "lease deleted -> route gone",
            delete["n"],
            delete["median"],
            delete["p99"],
            delete["max"],
        ],
    ]
    text = table(["event", "n", "median ms", "p99 ms", "max ms"], rows)
    text += f"\n\nlost events: {result['lost']} (real daemons: {args.peers})"
    print(text)
    write_results(
        "convergence",
        {"add_ms": add, "delete_ms": delete, "lost": result["lost"], "raw": result},
        text,
    )
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
