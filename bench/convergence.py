"""Lease-to-kernel convergence on a node with real peers: from a peer's lease written to etcd
until the node's route for it exists (routes are programmed after their neighbour and FDB
entries), and from its deletion until the route is gone.

    sudo python3 bench/convergence.py [--events 200] [--nodes 3]

Builds a namespace bed with N real daemons (network 10.0.0.0/12, /26 subnets) and runs
bench/convergence_probe.py inside node 1: it writes synthetic leases straight into etcd —
one at a time, 100 in one transaction, 1,000 at once — and listens to netlink route events
(one clock for both ends). Every event must be programmed: lost events are reported.
Writes bench/results/convergence.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import plot, summary, table, write_results
from testbed.bed import TestBed

CONFIG = {
    "Network": "10.0.0.0/12",
    "SubnetLen": 26,
    "SubnetMin": "10.0.0.64",
    "SubnetMax": "10.0.1.0",
    "Backend": {"Type": "vxlan"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="sequential add+delete pairs")
    parser.add_argument("--nodes", type=int, default=3, help="real daemons on the bed")
    args = parser.parse_args()
    with TestBed(hosts=args.nodes) as bed:
        bed.put_config(CONFIG)
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
                str(args.events),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        result = json.loads(out)
    rows, summaries = [], {}
    for phase, data in result.items():
        for what in ("add", "del"):
            s = summary(data[f"{what}_ms"])
            summaries[f"{phase}_{what}"] = s
            extra = (
                f"{data[f'all_{what}ed_ms' if what == 'add' else 'all_deleted_ms']:.1f}"
                if phase != "sequential"
                else "-"
            )
            rows.append(
                [
                    phase,
                    "written -> route present" if what == "add" else "deleted -> route gone",
                    s["n"],
                    s["median"],
                    s["p99"],
                    s["max"],
                    extra,
                ]
            )
    lost = sum(d["lost"] for d in result.values())
    text = table(["phase", "event", "n", "median ms", "p99 ms", "max ms", "all done ms"], rows)
    text += f"\n\nlost events: {lost}; {args.nodes} real daemons on the bed"
    print(text)
    plot(
        "convergence",
        "lease -> kernel route (ms)",
        {
            "median": (
                [f"{r[0]} {'add' if 'present' in r[1] else 'del'}" for r in rows],
                [r[3] for r in rows],
            ),
            "p99": (
                [f"{r[0]} {'add' if 'present' in r[1] else 'del'}" for r in rows],
                [r[4] for r in rows],
            ),
        },
        "",
        "milliseconds",
        kind="bar",
    )
    write_results("convergence", {"summary": summaries, "lost": lost, "raw": result}, text)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
