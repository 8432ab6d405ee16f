"""What the mesh prober costs: one real node with K synthetic peers (bench/scale_writer.py),
the daemon's CPU and the probes it sends per second with the prober on (default interval and
rate) against off, in one run. As root: ``python3 bench/mesh.py --peers 1000 --seconds 40``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table, write_results
from bench.scale import CONFIG, cpu_seconds, routes, write_peers
from testbed.bed import TestBed


def probes_sent(node) -> float:
    m = re.search(r"^pyflannel_mesh_probes_total ([\d.e+]+)$", node.endpoint("/metrics"), re.M)
    return float(m.group(1)) if m else 0.0


def measure(bed: TestBed, k: int, seconds: float, args: list[str]) -> dict:
    node = bed.nodes[0]
    node.start(*args)
    deadline = time.monotonic() + 300
    while routes(node) < k and time.monotonic() < deadline:
        time.sleep(0.05)
    node.wait_ready(300)
    time.sleep(3)
    c0, p0, t0 = cpu_seconds(node.pid), probes_sent(node), time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    result = {
        "cpu_pct": (cpu_seconds(node.pid) - c0) / took * 100,
        "probes_per_s": (probes_sent(node) - p0) / took,
    }
    node.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows, results = [], []
    with TestBed(hosts=1) as bed:
        bed.put_config(CONFIG)
        node = bed.nodes[0]
        write_peers(bed, node, args.peers)
        for _ in range(args.repeat):  # alternating, in one run
            for label, extra in (
                ("prober off", ["--probe-interval=0"]),
                ("prober on (defaults)", []),
            ):
                r = measure(bed, args.peers, args.seconds, extra)
                results.append({"mode": label, **r})
                rows.append([label, r["cpu_pct"], r["probes_per_s"]])
                print(
                    f"{label}: CPU {r['cpu_pct']:.2f} %, {r['probes_per_s']:.1f} probes/s",
                    flush=True,
                )
    text = table(["mode", "daemon CPU %", "probes/s"], rows)
    print(text)
    write_results("mesh", {"peers": args.peers, "seconds": args.seconds, "results": results}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
