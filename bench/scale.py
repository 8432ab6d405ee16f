"""Control-plane scale: one real node and K synthetic peers (leases written straight into
etcd), K = 100, 1,000, 5,000, 10,000 in 10.0.0.0/12 with /26 subnets.

    sudo python3 bench/scale.py [--peers 100 1000 5000 10000] [--idle 30]

For each K, on a fresh bed: seconds from `pyflannel run` until all K routes are in the kernel
(routes are programmed after their neighbour and FDB entries) and until "ready"; CPU seconds
and seconds to ready when restarted with everything in place (should be near zero work);
CPU use while nothing changes; RSS. Writes bench/results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import plot, table, write_results
from testbed.bed import TestBed

CONFIG = {
    "Network": "10.0.0.0/12",
    "SubnetLen": 26,
    "SubnetMin": "10.0.0.64",
    "SubnetMax": "10.0.0.192",
    "Backend": {"Type": "vxlan"},
}  # the node itself: a low subnet
WRITER = Path(__file__).with_name("scale_writer.py")


def routes(node) -> int:
    out = subprocess.run(
        ["ip", "-n", node.ns, "route", "show", "proto", "152"], capture_output=True, text=True
    )
    return out.stdout.count("\n")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return (
        int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    )


def ready_seconds(node) -> float:
    return float(re.findall(r"ready in ([\d.]+) s", node.log())[-1])


def write_peers(bed: TestBed, node, k: int) -> None:
    """K synthetic peers' leases, written from inside the node (bench/scale_writer.py)."""
    subprocess.run(
        ["ip", "netns", "exec", node.ns, sys.executable, str(WRITER), bed.etcd.url, "put", str(k)],
        check=True,
        timeout=300,
    )


def measure(k: int, idle: float) -> dict:
    with TestBed(hosts=1) as bed:
        bed.put_config(CONFIG)
        node = bed.nodes[0]
        write_peers(bed, node, k)
        t0 = time.monotonic()
        node.start()
        while routes(node) < k:
            if time.monotonic() - t0 > 300:
                raise TimeoutError(f"{routes(node)} of {k} routes after 300 s")
            time.sleep(0.02)
        programmed = time.monotonic() - t0
        node.wait_ready(300)
        cold_ready = ready_seconds(node)
        time.sleep(2)
        c0 = cpu_seconds(node.pid)
        time.sleep(idle)  # includes one periodic full reconcile at the default 30 s
        idle_cpu = (cpu_seconds(node.pid) - c0) / idle * 100
        rss = rss_mb(node.pid)
        node.stop()
        mark = len(node.log())
        node.start()
        node.wait_ready(300)
        warm_ready, warm_cpu = ready_seconds(node), cpu_seconds(node.pid)
        repaired = "kernel state repaired" in node.log()[mark:]
        node.stop()
    return {
        "peers": k,
        "programmed_s": programmed,
        "cold_ready_s": cold_ready,
        "warm_ready_s": warm_ready,
        "warm_cpu_s": warm_cpu,
        "warm_repairs": repaired,
        "idle_cpu_pct": idle_cpu,
        "rss_mb": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    parser.add_argument("--idle", type=float, default=30)
    args = parser.parse_args()
    rows = []
    for k in args.peers:
        r = measure(k, args.idle)
        rows.append(r)
        print(
            f"K={k}: "
            + ", ".join(
                f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in r.items()
                if key != "peers"
            ),
            flush=True,
        )
    text = table(
        [
            "peers",
            "run -> all routes (s)",
            "run -> ready (s)",
            "restart -> ready (s)",
            "restart CPU (s)",
            "restart repairs",
            "idle CPU %",
            "RSS MB",
            "ms per peer (cold)",
        ],
        [
            [
                r["peers"],
                r["programmed_s"],
                r["cold_ready_s"],
                r["warm_ready_s"],
                r["warm_cpu_s"],
                "none" if not r["warm_repairs"] else "some",
                r["idle_cpu_pct"],
                r["rss_mb"],
                1000 * r["programmed_s"] / r["peers"],
            ]
            for r in rows
        ],
    )
    print(text)
    ks = [r["peers"] for r in rows]
    plot(
        "scale",
        "pyflannel control plane: one node, K peers",
        {
            "pyflannel run -> all K routes programmed": (ks, [r["programmed_s"] for r in rows]),
            "restart with everything in place -> ready": (ks, [r["warm_ready_s"] for r in rows]),
        },
        "peers (K)",
        "seconds",
    )
    write_results("scale", {"rows": rows}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
