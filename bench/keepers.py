"""The control plane at cluster scale: 1,000 nodes' lease keepers (the daemon's own code, many
per process) booting at once against one real etcd, then against the bed's 3-member etcd with
its leader killed during the boot.

    sudo python3 bench/keepers.py [--nodes 1000] [--clients 0]

For each: time until every node holds a lease (and the median node), distinct subnets, races
lost and retried, etcd requests per node, and the watch events every node receives per renewal
round (pyflannel: keepalives; upstream: every key re-put). Writes
bench/results/keepers.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import plot, table, write_results
from testbed.bed import TestBed

CONFIG = {"Network": "10.0.0.0/12", "SubnetLen": 26}


def run_probe(bed: TestBed, nodes: int, clients: int, kill_leader_after: float | None) -> dict:
    probe = Path(__file__).with_name("keepers_probe.py")
    killer = None
    if kill_leader_after is not None:
        leader = bed.etcd.leader()

        def kill():
            time.sleep(kill_leader_after)
            leader.kill()

        killer = threading.Thread(target=kill)
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            bed.lan,
            sys.executable,
            str(probe),
            bed.etcd.url,
            str(nodes),
            str(clients),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if killer is not None:
        killer.start()
    out, err = proc.communicate(timeout=900)
    if killer is not None:
        killer.join()
    if proc.returncode != 0:
        raise RuntimeError(err[-3000:])
    result = json.loads(out.splitlines()[-1])
    result["leader_killed"] = kill_leader_after is not None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="etcd clients the keepers share (default 0: one per keeper, as every node has its "
        "own; a client's calls share one HTTP/2 connection, as in etcd's own clients)",
    )
    parser.add_argument("--kill-after", type=float, default=0.5, help="s into the boot")
    parser.add_argument(
        "--scale",
        type=int,
        nargs="*",
        default=[100, 300, 1000, 3000],
        help="also boot this many nodes on one etcd each, for the plot of time against nodes",
    )
    args = parser.parse_args()
    results = {}
    clients_for = lambda n: args.clients or n  # noqa: E731
    scale: dict[int, dict] = {}
    for n in args.scale:
        with TestBed(hosts=0) as bed:
            bed.put_config(CONFIG)
            scale[n] = run_probe(bed, n, clients_for(n), None)
            print(json.dumps({"scale": n, **scale[n]}), flush=True)
    with TestBed(hosts=0) as bed:
        bed.put_config(CONFIG)
        results["one etcd"] = run_probe(bed, args.nodes, clients_for(args.nodes), None)
        print(json.dumps(results["one etcd"]), flush=True)
    with TestBed(hosts=0, etcd_members=3) as bed:
        bed.put_config(CONFIG)
        results["3 members, leader killed"] = run_probe(
            bed, args.nodes, clients_for(args.nodes), args.kill_after
        )
        print(json.dumps(results["3 members, leader killed"]), flush=True)
    rows = [
        [
            name,
            r["nodes"],
            r["all_held_s"],
            r["median_held_s"],
            r["distinct_subnets"],
            r["races_lost"],
            f"{r['races_lost_per_node']:.2f}",
            r["requests_per_node_median"],
            r["requests_per_node_p99"],
            f"{r['requests_per_node']:.1f}",
            r["events_per_watcher_per_renewal_round"]["pyflannel"],
            r["events_per_watcher_per_renewal_round"]["upstream"],
        ]
        for name, r in results.items()
    ]
    text = table(
        [
            "etcd",
            "nodes",
            "all hold a lease (s)",
            "median node (s)",
            "distinct subnets",
            "races lost (retried)",
            "races / node",
            "requests / node: median",
            "p99",
            "mean",
            "events / watcher / renewal (pyflannel)",
            "(upstream: re-put)",
        ],
        rows,
    )
    if scale:
        text += "\n\n" + table(
            ["nodes (one etcd)", "all hold a lease (s)", "median node (s)", "races / node",
             "requests / node: median"],
            [
                [n, r["all_held_s"], r["median_held_s"], f"{r['races_lost_per_node']:.2f}",
                 r["requests_per_node_median"]]
                for n, r in scale.items()
            ],
        )  # fmt: skip
        plot(
            "keepers-scale",
            "Lease keepers booting at once on one etcd: time until all hold a lease",
            {
                "all hold a lease": (list(scale), [r["all_held_s"] for r in scale.values()]),
                "median node": (list(scale), [r["median_held_s"] for r in scale.values()]),
            },
            "nodes booting at once",
            "seconds",
        )
    write_results("keepers", {"results": results, "scale": scale}, text)
    plot(
        "keepers",
        f"{args.nodes} lease keepers booting at once: share holding a lease",
        {name: (r["timeline_s"], [0, 25, 50, 75, 90, 99, 100]) for name, r in results.items()},
        "seconds since boot",
        "% of nodes holding a lease",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
