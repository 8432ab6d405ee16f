"""The MTU fixed per peer path (--fix-path-mtu), measured on the bed of
tests/e2e/test_path_mtu.py: three VXLAN nodes, the h1-h3 path narrowed to 1400-byte underlay
packets (larger ones vanish, no ICMP), h1-h2 at full size. Per run, a fresh bed:

- from the black hole to a working TCP transfer: seconds from the narrowing until a 1 MB
  transfer from h1's pod to h3's pod completes (tried again at once, 2 s each), for each probe
  interval asked (3 lost full-size rounds name the black hole, then one measurement; the first
  end to fix the path clamps both directions, so TCP works from then);
- probes the measurement spent;
- throughput (iperf3, one TCP stream, h1's pod to h3's and to h2's) with the path fixed,
  against the operator's fix by hand: every node's underlay MTU lowered to 1400 (pod MTU 1350
  for the whole network), --fix-path-mtu off.

    sudo python3 bench/path_mtu.py --runs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, wait_for, write_results
from testbed import netns
from testbed.bed import TestBed
from testbed.iperf import iperf, received_bits_per_second
from tests.e2e.test_path_mtu import NARROW, OFFLOADS, SINK, narrow, serving

SECONDS = 5  # per iperf3 run
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=2)
c.settimeout(2)
c.sendall(bytes(1 << 20))
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


def one_mb(src, dst) -> bool:
    """Does a 1 MB transfer from src's pod to dst's pod complete within 2 s?"""
    with serving(dst, SINK) as received:
        sent = netns.run(
            ["python3", "-c", CLIENT, str(dst.pod_ip)], ns=src.pod_ns, check=False, timeout=10
        )
        return sent.returncode == 0 and received.readline().strip() == str(1 << 20)


def gbit(a, b) -> float:
    return received_bits_per_second(iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), SECONDS)) / 1e9


def path_mtu(node, peer) -> dict:
    rows = {r["subnet"]: r for r in node.status()["peers"]}
    return rows[str(peer.subnet)]["path"] or {}


def start(bed, *args: str) -> None:
    for node in bed.nodes:
        node.start("--reconcile-interval=5", *args)
    for node in bed.nodes:
        node.wait_ready()
        node.add_pod()


def one_run(interval: float) -> dict:
    with TestBed(hosts=3) as bed:
        bed.put_config()
        h1, h2, h3 = bed.nodes
        for node in bed.nodes:
            node.run("ethtool", "-K", "eth0", *(x for o in OFFLOADS for x in (o, "off")))
        start(bed, f"--probe-interval={interval}")
        wait_for(lambda: path_mtu(h1, h3).get("state") == "ok", 60)
        narrow(bed, h1, h3)
        out = {"to_working_tcp_s": wait_for(lambda: one_mb(h1, h3), 120)}
        # TCP works as soon as either end clamps (both directions); h1's own fix may follow
        wait_for(lambda: path_mtu(h1, h3).get("path_mtu") is not None, 60)
        fixed = path_mtu(h1, h3)
        out["fixed_mtu"] = fixed.get("path_mtu")
        out["probes"] = fixed.get("path_mtu_probes")
        out["fixed_h1_h3_gbit_s"] = gbit(h1, h3)
        out["fixed_h1_h2_gbit_s"] = gbit(h1, h2)
        for node in bed.nodes:  # the fix by hand: the whole network at the narrow path's MTU
            node.stop()
            node.run("ip", "link", "set", "eth0", "mtu", str(NARROW))
        start(bed, f"--probe-interval={interval}", "--fix-path-mtu=false")
        out["by_hand_pod_mtu"] = h1.mtu
        out["by_hand_h1_h3_gbit_s"] = gbit(h1, h3)
        out["by_hand_h1_h2_gbit_s"] = gbit(h1, h2)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--intervals", default="1,10", help="probe intervals (s), comma-separated")
    opts = parser.parse_args()
    intervals = [float(x) for x in opts.intervals.split(",")]
    runs: dict[str, list[dict]] = {str(i): [] for i in intervals}
    for n in range(opts.runs):
        for interval in intervals:
            run = one_run(interval)
            runs[str(interval)].append(run)
            print(f"run {n + 1}, probe interval {interval:g} s: {run}", flush=True)

    def median(key: str, interval: float) -> float:
        return summary([float(r[key] or "nan") for r in runs[str(interval)]])["median"]

    rows = [
        [
            f"black hole -> working TCP, probe interval {i:g} s (s)",
            f"{median('to_working_tcp_s', i):.1f}",
        ]
        for i in intervals
    ]
    first = intervals[0]
    rows += [
        ["MTU found for the narrow path", f"{median('fixed_mtu', first):.0f}"],
        ["probes spent measuring it", f"{median('probes', first):.0f}"],
        [
            "h1 -> h3 (narrow path): fixed on its path / whole network lowered by hand (Gbit/s)",
            f"{median('fixed_h1_h3_gbit_s', first):.2f} / {median('by_hand_h1_h3_gbit_s', first):.2f}",
        ],
        [
            "h1 -> h2 (full path): fixed on the other path / whole network lowered (Gbit/s)",
            f"{median('fixed_h1_h2_gbit_s', first):.2f} / {median('by_hand_h1_h2_gbit_s', first):.2f}",
        ],
    ]
    text = table([f"path MTU per peer ({opts.runs} runs, medians)", "measured"], rows)
    write_results("path_mtu", {"runs": runs}, text)
    print(text)


if __name__ == "__main__":
    main()
