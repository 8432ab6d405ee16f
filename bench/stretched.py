"""etcd stretched across two sites (testbed/sites.py: e1, e2 and node 1 on site A; e3 and node 2
on site B; every etcd connection across delayed by a userspace relay): lease to route on each
site against the round trip across. Each node's probe writes leases through its own site's
member and times them into that node's kernel.

    sudo python3 bench/stretched.py [--one-way 0 10 25 50] [--events 30]

Writes bench/results/stretched.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, write_results
from testbed.sites import TwoSiteBed

CONFIG = {"Network": "10.0.0.0/12", "SubnetLen": 26, "Backend": {"Type": "vxlan", "VNI": 1}}
PROBE = Path(__file__).with_name("stretched_probe.py")


def probe(bed: TwoSiteBed, node, member, events: int, first: int) -> dict:
    out = subprocess.run(
        ["ip", "netns", "exec", node.ns, sys.executable, str(PROBE), member.url, str(events),
         str(first)],
        capture_output=True, text=True, timeout=600, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def one(one_way_ms: float, events: int) -> dict:
    with TwoSiteBed(
        hosts=2, etcd_members=3, far_members={3}, far_nodes={2}, one_way_ms=one_way_ms
    ) as bed:
        bed.put_config(CONFIG)
        for node in bed.nodes:
            node.start("--probe-interval=0")
        for node in bed.nodes:
            node.wait_ready(timeout=60)
        e1, e3 = bed.etcd.members[0], bed.etcd.members[2]  # type: ignore[union-attr]
        a = probe(bed, bed.nodes[0], e1, events, 1000)
        b = probe(bed, bed.nodes[1], e3, events, 2000)
        return {"site A": a, "site B": b}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-way", type=float, nargs="+", default=[0, 10, 25, 50])
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    results = {}
    rows = []
    for one_way in args.one_way:
        r = one(one_way, args.events)
        results[str(one_way)] = r
        a, b = summary(r["site A"]["add_ms"]), summary(r["site B"]["add_ms"])
        rows.append(
            [f"{one_way:g}", f"{2 * one_way:g}", a["median"], a["p99"], b["median"], b["p99"],
             r["site A"]["lost"] + r["site B"]["lost"]]
        )  # fmt: skip
        print(rows[-1], flush=True)
    text = table(
        ["one way across (ms)", "round trip across (ms)", "site A: lease → route median ms",
         "p99", "site B: median ms", "p99", "never programmed"],
        rows,
    )  # fmt: skip
    write_results("stretched", {"results": results}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
