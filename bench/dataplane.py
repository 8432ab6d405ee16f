"""Data-plane throughput and latency: the bare underlay, kernel VXLAN, the UDP backend with
each data-path design, and WireGuard (userspace), in one run on one 2-node test bed.

    sudo python3 bench/dataplane.py [--repeat 3] [--seconds 3] [--mtu 1500] [--modes ...]
    sudo python3 bench/dataplane.py --latency [--repeat 3]

``--latency``: the UDP path's latency, pyflannel's (as it runs by default, with its
data-path priority off, real time always, and on the stdlib event loop it ran on before the
epoll loop) beside upstream flanneld v0.20.2's and kernel VXLAN, in one run:
pod-to-pod ping RTT (300 pings 10 ms apart; p50 and p99) idle and beside a busy loop on every
core (nice 0, as a noisy neighbour's), and 1-stream TCP throughput with the daemons' CPU per
GB; each mode in turn, repeated, medians of the repeats. Also how many of the nodes' threads
ran real time at the end of the idle and of the busy pings (auto: none idle, the packet
threads busy). Writes bench/results/dataplane-latency.{json,md}.

For each mode: iperf3 TCP pod -> pod (underlay: host -> host) with 1 and 4 streams, both
directions, repeated; ping RTT (median, p99); CPU seconds the two daemons and their UDP
workers spent per run and per gigabyte carried; for the UDP modes the datagrams per second
the tunnel delivered (both nodes, both directions). Medians and spread go to
bench/results/dataplane-mtu<MTU>.{json,md}; ratios are against the underlay and against
VXLAN of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, plot, summary, table, write_results
from testbed import netns
from testbed.bed import TestBed
from testbed.iperf import iperf, received_bits_per_second

# underlay: host to host, no overlay. direct: pod to pod with DirectRouting (routes via the
# peer's underlay address: the pod plumbing without encapsulation, the fair baseline for
# what VXLAN itself costs). host-gw: the host-gw backend (the same plain routes, made by
# their own backend; should match direct). The rest: pod to pod through the overlay.
# udp-threads/-asyncio/-uvloop: the per-packet path (fast path off) with each loop design, one
# worker; udp-fast: batched with kernel offloads (TSO from the TUN, UDP_SEGMENT, UDP_GRO, GSO
# writes to the TUN), one worker, and with the other loop designs; -2w: two workers a node
# (multi-queue TUN, steered sockets).
UDP_ARGS = {
    "udp-threads": ["--udp-datapath=threads", "--udp-fastpath=false", "--udp-workers=1"],
    "udp-asyncio": ["--udp-datapath=asyncio", "--udp-fastpath=false", "--udp-workers=1"],
    "udp-uvloop": ["--udp-datapath=uvloop", "--udp-fastpath=false", "--udp-workers=1"],
    "udp-asyncio-2w": ["--udp-datapath=asyncio", "--udp-fastpath=false", "--udp-workers=2"],
    "udp-fast": ["--udp-fastpath=true", "--udp-workers=1"],
    "udp-fast-threads": ["--udp-fastpath=true", "--udp-workers=1", "--udp-datapath=threads"],
    "udp-fast-uvloop": ["--udp-fastpath=true", "--udp-workers=1", "--udp-datapath=uvloop"],
    "udp-fast-2w": ["--udp-fastpath=true", "--udp-workers=2"],
}
# wireguard: the wireguard backend through userspace wireguard-go (this kernel has no module;
# wireguard-go's CPU counts as the daemon's).
MODES = ("underlay", "direct", "host-gw", "vxlan", *UDP_ARGS, "wireguard")


def daemon_pids(bed: TestBed) -> list[int]:
    """Every running daemon and its children (UDP workers, wireguard-go)."""
    return [pid for n in bed.nodes if n.running for pid in (n.pid, *n.all_children())]


def tunnel_datagrams(bed: TestBed) -> int:
    """Datagrams the UDP tunnel delivered so far, both nodes (so both directions)."""
    return sum(n.status()["backend"]["udp"]["from_peers"]["packets"] for n in bed.nodes)


def configure(bed: TestBed, mode: str) -> None:
    """(Re)start the daemons for ``mode``; pods keep their subnets (leases are reused)."""
    for node in bed.nodes:
        node.stop()
        for dev in ("flannel.1", "flannel0", "flannel-wg"):
            node.run("ip", "link", "del", dev, check=False)
        node.run("ip", "route", "flush", "proto", "152", check=False)
    if mode == "underlay":
        return
    backend = (
        {"Type": "wireguard"}
        if mode == "wireguard"
        else {"Type": "udp"}
        if mode.startswith("udp")
        else {"Type": "host-gw"}
        if mode == "host-gw"
        else {"Type": "vxlan", "DirectRouting": mode == "direct"}
    )
    bed.put_config({"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": backend})
    args = UDP_ARGS.get(mode, [])
    for node in bed.nodes:
        node.start(*args, private_run=mode == "wireguard")
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
    udp = mode in UDP_ARGS
    result = {"rtt_ms": summary(rtts), "runs": {}}
    for streams in (1, 4):
        for reverse in (False, True):
            label = f"{streams}x {'b->a' if reverse else 'a->b'}"
            rates, cpus, cpu_per_gb, pps = [], [], [], []
            for _ in range(args.repeat):
                pids = daemon_pids(bed)
                cpu0 = [cpu_seconds(p) for p in pids]
                dg0 = tunnel_datagrams(bed) if udp else 0
                rate = (
                    received_bits_per_second(
                        iperf(client, server, server_ip, args.seconds, streams, reverse)
                    )
                    / 1e9
                )
                rates.append(rate)
                cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
                cpus.append(cpu)
                cpu_per_gb.append(cpu / (rate * args.seconds / 8) if rate else float("inf"))
                if udp:  # datagrams flow only during iperf3's test time
                    pps.append((tunnel_datagrams(bed) - dg0) / args.seconds)
            result["runs"][label] = {
                "gbps": summary(rates),
                "daemon_cpu_s": summary(cpus),
                "cpu_s_per_gb": summary(cpu_per_gb),
                "pps": summary(pps) if pps else None,
                "samples": rates,
            }
    return result


def ratio(results: dict, base: str, mode: str, label: str) -> str:
    """Median throughput of ``mode`` over that of ``base`` in the same run ("-" if not run)."""
    if base not in results:
        return "-"

    def median(m: str) -> float:
        return results[m]["runs"][label]["gbps"]["median"]

    return f"{median(mode) / median(base):.3f}"


# --latency: (implementation, backend, pyflannel's flags)
LATENCY_MODES = {
    "vxlan (kernel)": ("pyflannel", "vxlan", ()),
    "udp pyflannel": ("pyflannel", "udp", ()),
    "udp pyflannel, priority off": ("pyflannel", "udp", ("--udp-priority=normal",)),
    "udp pyflannel, real time always": ("pyflannel", "udp", ("--udp-priority=realtime",)),
    "udp pyflannel, stdlib loop, priority off": (  # the data path's loop before epoll
        "pyflannel",
        "udp",
        ("--udp-datapath=asyncio", "--udp-priority=normal"),
    ),
    "udp upstream": ("upstream", "udp", ()),
}
PINGS = 300


def ping_rtts(a, b) -> list[float]:
    """Milliseconds, pod a -> pod b, PINGS pings 10 ms apart (lost ones left out)."""
    out = netns.run(
        ["ping", "-n", "-c", str(PINGS), "-i", "0.01", str(b.pod_ip)],
        ns=a.pod_ns,
        check=False,
        timeout=60,
    ).stdout
    return [float(x.split("=")[1]) for x in out.split() if x.startswith("time=")]


@contextlib.contextmanager
def noisy_neighbour():
    """A busy loop on every core, at the default priority (nice 0)."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        time.sleep(0.5)
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def realtime_threads(nodes) -> int:
    """How many threads of the nodes' daemons and workers run real time (SCHED_RR) now."""
    count = 0
    for node in nodes:
        for pid in (node.pid, *node.all_children()):
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        count += os.sched_getscheduler(int(tid)) == os.SCHED_RR
    return count


def latency_once(bed: TestBed, mode: str, seconds: float) -> dict:
    from bench.upstream import cluster

    impl, backend, flags = LATENCY_MODES[mode]
    cluster(bed, impl, backend, flags=flags)
    a, b = bed.nodes[0], bed.nodes[1]
    for node in (a, b):
        node.add_pod()
    deadline = time.monotonic() + 30  # upstream's udp may take a while to pass a first packet
    while a.ping(b.pod_ip, count=1, wait=1).received != 1 and time.monotonic() < deadline:
        pass
    idle = summary(ping_rtts(a, b))
    realtime_idle = realtime_threads((a, b))
    with noisy_neighbour():
        busy = summary(ping_rtts(a, b))
        realtime_busy = realtime_threads((a, b))
    pids = [p for n in (a, b) for p in (n.pid, *n.all_children())]
    cpu0 = [cpu_seconds(p) for p in pids]
    try:
        rate = received_bits_per_second(iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds, 1)) / 1e9
    except subprocess.TimeoutExpired:  # no TCP through this path this time (upstream's udp)
        rate = float("nan")
    cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
    return {
        "idle_p50": idle["median"],
        "idle_p99": idle["p99"],
        "busy_p50": busy["median"],
        "busy_p99": busy["p99"],
        "lost": 2 * PINGS - idle["n"] - busy["n"],
        "rt_idle": realtime_idle,
        "rt_busy": realtime_busy,
        "gbps": rate,
        "cpu_s_per_gb": cpu / (rate * seconds / 8) if rate == rate and rate else float("nan"),
    }


def latency(args) -> int:
    """The --latency table: every mode once per repeat, in turn (so a drift of the machine
    touches them alike); medians of the repeats."""
    samples: dict[str, list[dict]] = {mode: [] for mode in LATENCY_MODES}
    with TestBed(hosts=2) as bed:
        for n in range(args.repeat):
            for mode in LATENCY_MODES:
                samples[mode].append(latency_once(bed, mode, args.seconds))
                print(f"run {n + 1} {mode}: {samples[mode][-1]}", flush=True)
    keys = (
        "idle_p50",
        "idle_p99",
        "busy_p50",
        "busy_p99",
        "gbps",
        "cpu_s_per_gb",
        "lost",
        "rt_idle",
        "rt_busy",
    )
    results = {
        mode: {k: summary([s[k] for s in runs])["median"] for k in keys} | {"samples": runs}
        for mode, runs in samples.items()
    }
    up = results["udp upstream"]
    rows = [
        [
            mode,
            r["idle_p50"],
            r["idle_p99"],
            r["busy_p50"],
            r["busy_p99"],
            f"{r['idle_p50'] / up['idle_p50']:.2f} / {r['idle_p99'] / up['idle_p99']:.2f}",
            r["gbps"],
            r["cpu_s_per_gb"],
            int(r["lost"]),
            f"{r['rt_idle']:g} / {r['rt_busy']:g}",
        ]
        for mode, r in results.items()
    ]
    text = table(
        [
            "path",
            "idle p50 ms",
            "idle p99 ms",
            "busy p50 ms",
            "busy p99 ms",
            "idle x upstream p50 / p99",
            "1-stream Gbit/s",
            "CPU s/GB",
            "pings lost",
            "real-time threads idle / busy",
        ],
        rows,
    )
    text += (
        f"\n\n{PINGS} pings 10 ms apart pod to pod, idle and beside a busy loop per core (nice 0);"
        f" iperf3 1 stream {args.seconds} s; medians of {args.repeat} runs, modes in turn"
    )
    print(text)
    write_results("dataplane-latency", {"args": vars(args), "results": results}, text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--latency", action="store_true", help="the UDP path's latency table")
    args = parser.parse_args()
    if args.latency:
        return latency(args)
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
    rows = []
    for mode, r in results.items():
        for label, run in r["runs"].items():
            g = run["gbps"]
            pps = f"{run['pps']['median'] / 1000:.0f}k" if run["pps"] else "-"
            rows.append(
                [
                    mode,
                    label,
                    g["median"],
                    f"{g['min']:.2f}-{g['max']:.2f}",
                    ratio(results, "underlay", mode, label),
                    ratio(results, "vxlan", mode, label),
                    run["daemon_cpu_s"]["median"],
                    run["cpu_s_per_gb"]["median"],
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
            "x VXLAN",
            "daemon CPU s",
            "CPU s/GB",
            "datagrams/s",
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
