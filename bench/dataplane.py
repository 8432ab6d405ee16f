"""Data-plane throughput and latency: the bare underlay, kernel VXLAN, and the UDP backend with
each data-path design (threads, asyncio, uvloop), in one run on one 2-node test bed.

    sudo python3 bench/dataplane.py [--repeat 3] [--seconds 3] [--mtu 1500] [--modes ...]

For each mode: iperf3 TCP pod -> pod (underlay: host -> host) with 1 and 4 streams, both
directions, repeated; ping RTT (median, p99); CPU seconds the two daemons spent per run; and
for the UDP modes the packets per second through flannel0. Medians and spread go to
bench/results/dataplane.{json,md}; ratios are against the underlay of the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import plot, summary, table, write_results
from pyflannel.testbed import netns
from pyflannel.testbed.bed import TestBed
from pyflannel.testbed.iperf import iperf, received_bits_per_second

# underlay: host to host, no overlay. direct: pod to pod with DirectRouting (routes via the
# peer's underlay address: the pod plumbing without encapsulation, the fair baseline for
# what VXLAN itself costs). The rest: pod to pod through the overlay.
# udp-threads/-asyncio/-uvloop: the per-packet path with each loop design; udp-fast: the
# default, batched with kernel offloads (UDP_SEGMENT, UDP_GRO, GSO writes to the TUN).
MODES = ("underlay", "direct", "vxlan", "udp-threads", "udp-asyncio", "udp-uvloop", "udp-fast")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tun_packets(node) -> int:
    for line in node.run("cat", "/proc/net/dev").stdout.splitlines():
        if line.strip().startswith("flannel0:"):
            f = line.split(":", 1)[1].split()
            return int(f[1]) + int(f[9])  # rx + tx packets
    return 0


def configure(bed: TestBed, mode: str) -> None:
    """(Re)start the daemons for ``mode``; pods keep their subnets (leases are reused)."""
    for node in bed.nodes:
        node.stop()
        for dev in ("flannel.1", "flannel0"):
            node.run("ip", "link", "del", dev, check=False)
        node.run("ip", "route", "flush", "proto", "152", check=False)
    if mode == "underlay":
        return
    backend = (
        {"Type": "udp"}
        if mode.startswith("udp")
        else {"Type": "vxlan", "DirectRouting": mode == "direct"}
    )
    bed.put_config({"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": backend})
    if mode == "udp-fast":
        args = ["--udp-fastpath=true"]
    elif mode.startswith("udp"):
        args = [f"--udp-datapath={mode.split('-', 1)[1]}", "--udp-fastpath=false"]
    else:
        args = []
    for node in bed.nodes:
        node.start(*args)
    for node in bed.nodes:
        node.wait_ready()
        node.add_pod()
    time.sleep(0.5)


def measure(bed: TestBed, mode: str, args) -> dict:
    a, b = bed.nodes
    if mode == "underlay":
        client, server, server_ip, ping_from = a.ns, b.ns, str(b.underlay_ip), a.ns
    else:
        client, server, server_ip, ping_from = a.pod_ns, b.pod_ns, str(b.pod_ip), a.pod_ns
    ping = netns.run(
        ["ping", "-n", "-c", "200", "-i", "0.005", server_ip], ns=ping_from, check=False, timeout=60
    )
    rtts = [float(x.split("=")[1]) for x in ping.stdout.split() if x.startswith("time=")]
    result = {"rtt_ms": summary(rtts), "runs": {}}
    for streams in (1, 4):
        for reverse in (False, True):
            label = f"{streams}x {'b->a' if reverse else 'a->b'}"
            rates, cpus, pps = [], [], []
            for _ in range(args.repeat):
                pids = [n.pid for n in bed.nodes if n.running]
                cpu0 = [cpu_seconds(p) for p in pids]
                pk0 = tun_packets(a) if mode.startswith("udp") else 0
                t0 = time.monotonic()
                rates.append(
                    received_bits_per_second(
                        iperf(client, server, server_ip, args.seconds, streams, reverse)
                    )
                    / 1e9
                )
                elapsed = time.monotonic() - t0
                cpus.append(sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)))
                if mode.startswith("udp"):
                    pps.append((tun_packets(a) - pk0) / elapsed)
            result["runs"][label] = {
                "gbps": summary(rates),
                "daemon_cpu_s": summary(cpus),
                "pps": summary(pps) if pps else None,
                "samples": rates,
            }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()
    results = {}
    with TestBed(hosts=2, mtu=args.mtu) as bed:
        bed.put_config()
        for mode in args.modes:
            configure(bed, mode)
            results[mode] = measure(bed, mode, args)
            print(
                f"{mode}: "
                + ", ".join(
                    f"{k} {v['gbps']['median']:.2f}" for k, v in results[mode]["runs"].items()
                ),
                flush=True,
            )
    base = results.get("underlay")
    rows = []
    for mode, r in results.items():
        for label, run in r["runs"].items():
            g = run["gbps"]
            ratio = g["median"] / base["runs"][label]["gbps"]["median"] if base else float("nan")
            spread = f"{g['min']:.2f}-{g['max']:.2f}"
            pps = f"{run['pps']['median'] / 1000:.0f}k" if run["pps"] else "-"
            rows.append(
                [
                    mode,
                    label,
                    g["median"],
                    spread,
                    f"{ratio:.3f}",
                    run["daemon_cpu_s"]["median"],
                    pps,
                    r["rtt_ms"]["median"],
                    r["rtt_ms"]["p99"],
                ]
            )
    text = table(
        [
            "mode",
            "streams",
            "Gbit/s median",
            "min-max",
            "x underlay",
            "daemon CPU s",
            "pps",
            "RTT ms median",
            "RTT ms p99",
        ],
        rows,
    )
    text += f"\n\nunderlay MTU {args.mtu}, iperf3 {args.seconds} s x {args.repeat} per cell"
    print(text)
    labels = list(results)
    plot(
        f"dataplane-mtu{args.mtu}",
        f"TCP throughput, underlay MTU {args.mtu} (median of {args.repeat})",
        {
            label: (labels, [results[m]["runs"][label]["gbps"]["median"] for m in labels])
            for label in ("1x a->b", "4x a->b")
        },
        "",
        "Gbit/s",
        kind="bar",
    )
    write_results(f"dataplane-mtu{args.mtu}", {"args": vars(args), "results": results}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
