"""pyflannel against upstream flanneld (v0.20.2, ../shared/anchors) on the same namespace bed,
alternating, repeated, in one run.

    sudo python3 bench/upstream.py [--repeat 3] [--seconds 3] [--events 100] [--dev-tree]

pyflannel runs as an operator installs it: this tree's wheel in a virtual environment
(bench/common.py's ``installed_python``); ``--dev-tree``: this tree, by this interpreter.

Per implementation (every node of the bed runs the one measured):
- start to subnet.env and to "ready" (the route to a peer in the kernel: the same end point for
  both, as upstream has no ready signal), cold (no device, no lease, no subnet file) and warm
  (a restart with everything in place);
- idle RSS and CPU of a daemon with 2 peers and with 1,000 (synthetic leases);
- lease-to-route: sequential leases (median, p99), 100 in one transaction and 1,000 written at
  once, counting what was never programmed (bench/convergence_probe.py in node 1);
- a lease written right after an etcd restart: time to its route; the same after etcd was
  away 10 s and 60 s (frozen, then killed), with the daemon's CPU meanwhile; and after the
  member in use (a follower of a 3-member etcd) is cut off from its peers (bench/recovery.py);
- pod-to-pod throughput (iperf3, 1 stream) and daemon CPU per GB for vxlan, host-gw and udp.
Medians; ratios pyflannel / upstream of the same run. Writes
bench/results/upstream.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import recovery
from bench.common import (
    compiled,
    cpu_seconds,
    installed_python,
    plot,
    summary,
    table,
    write_results,
)
from testbed.bed import Node, TestBed
from testbed.iperf import iperf, received_bits_per_second
from testbed.upstream import launch_upstream, upstream_flanneld

IMPLEMENTATIONS = ("pyflannel", "upstream")
CONFIG = {
    "Network": "10.0.0.0/12",
    "SubnetLen": 26,
    "SubnetMin": "10.0.0.64",
    "SubnetMax": "10.0.1.0",
}
BACKENDS = {"vxlan": {"Type": "vxlan"}, "host-gw": {"Type": "host-gw"}, "udp": {"Type": "udp"}}
DEVICES = ("flannel.1", "flannel0")
UPSTREAM_WATCHING = "Watching for new subnet leases"


def put_config(bed: TestBed, backend: str) -> None:
    bed.put_config({**CONFIG, "Backend": BACKENDS[backend]})


def launch(node: Node, impl: str, endpoints: str = "", flags: Sequence[str] = ()) -> None:
    """Start ``impl`` on the node (``endpoints``: other than the bed's etcd URL; ``flags``:
    more of pyflannel's)."""
    if impl == "pyflannel":
        extra = [f"--etcd-endpoints={endpoints}"] if endpoints else []
        node.start("--healthz-port=0", "--probe-interval=0", *extra, *flags)
    else:
        launch_upstream(node, *([f"-etcd-endpoints={endpoints}"] if endpoints else []))


def wipe(node: Node, lease: bool = True) -> None:
    """Stop the node's daemon; remove its devices, routes, subnet file (cold start)."""
    node.stop()
    node.proc = None
    for dev in DEVICES:
        node.run("ip", "link", "del", dev, check=False)
    for proto in ("152", "boot"):
        node.run("ip", "route", "flush", "proto", proto, "table", "main", check=False)
    if lease:
        node.subnet_file.unlink(missing_ok=True)


def has_route(node: Node, subnet: str) -> bool:
    """Does the node route ``subnet``'s first address (a peer route, or the UDP backend's one
    route for the network into flannel0)?"""
    address = subnet.split("/")[0].rsplit(".", 1)
    first = f"{address[0]}.{int(address[1]) + 1}"
    out = node.run("ip", "route", "get", first, check=False)
    return out.returncode == 0 and "unreachable" not in out.stdout


def timed_start(node: Node, impl: str, peer: Node) -> tuple[float, float]:
    """Seconds from exec to subnet.env, and to the route to ``peer``'s subnet."""
    peer_subnet = str(peer.subnet)
    node.subnet_file.unlink(missing_ok=True)
    t0 = time.monotonic()
    launch(node, impl)
    while not node.subnet_file.exists():
        if time.monotonic() - t0 > 30:
            raise TimeoutError(node.log()[-2000:])
        time.sleep(0.002)
    t_env = time.monotonic() - t0
    while not has_route(node, peer_subnet):
        if time.monotonic() - t0 > 30:
            raise TimeoutError(f"no route to {peer_subnet}:\n{node.log()[-2000:]}")
        time.sleep(0.002)
    return t_env, time.monotonic() - t0


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def idle(node: Node, seconds: float) -> tuple[float, float]:
    """(RSS MB, CPU % over ``seconds``) of the node's daemon."""
    pid = node.pid  # the daemon itself: `ip netns exec` execs it
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return rss_mb(pid), (cpu_seconds(pid) - c0) / seconds * 100


def in_node(node: Node, script: str, *args: str, timeout: float = 300) -> str:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node.ns,
            sys.executable,
            str(Path(__file__).with_name(script)),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout


def route_count(node: Node) -> int:
    return len(node.run("ip", "route", "show", "root", "10.0.0.0/12").stdout.splitlines())


def cluster(
    bed: TestBed, impl: str, backend: str = "vxlan", endpoints: str = "", flags: Sequence[str] = ()
) -> None:
    """Every node runs ``impl`` (one at a time: v0.20.2 loses leases of nodes that start
    together), ready; ``flags``: more of pyflannel's."""
    put_config(bed, backend)
    for node in bed.nodes:
        wipe(node)
    bed.etcd.ctl("del", "/coreos.com/network/subnets/", "--prefix")  # a new cluster
    for n, node in enumerate(bed.nodes):
        watching = node.log().count(UPSTREAM_WATCHING)
        launch(node, impl, endpoints, flags)
        deadline = time.monotonic() + 30
        while not node.subnet_file.exists():
            assert time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.02)
        # The udp backend's one route is there at once: for upstream, wait for its watch
        # instead, and a second more (it logs before its etcd watch is in place, and a lease
        # written in between is one it never sees: measured here, 1 start in 2).
        while impl == "upstream" and node.log().count(UPSTREAM_WATCHING) == watching:
            assert time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.02)
        if impl == "upstream":
            time.sleep(1)
        for other in bed.nodes[:n]:
            while not has_route(node, str(other.subnet)):
                assert time.monotonic() < deadline, node.log()[-2000:]
                time.sleep(0.02)


def etcd_restart_lease(bed: TestBed, node: Node) -> float:
    """ms from a lease written right after etcd came back (a graceful stop, 1 s down) until
    the node's route for it (NaN: never, e.g. the daemon died)."""
    bed.etcd.stop_keeping_data()
    time.sleep(1)
    bed.etcd.start()
    t0 = time.monotonic()
    bed.etcd.put(recovery.KEY, recovery.VALUE)
    elapsed = recovery.routed_within(node, has_route, t0, limit=30)
    bed.etcd.ctl("del", recovery.KEY)
    return elapsed


def etcd_away(bed: TestBed, impl: str, seconds: float, out: dict) -> None:
    """One etcd_away sample (bench/recovery.py) on a cluster of ``impl`` that is running."""
    if not all(n.running for n in bed.nodes):
        try:
            cluster(bed, impl)
        except AssertionError:
            out[f"after_etcd_away_{seconds:g}s_ms"].append(float("nan"))
            return
    ms, cpu = recovery.etcd_away(bed, bed.nodes[0], seconds, has_route)
    out[f"after_etcd_away_{seconds:g}s_ms"].append(ms)
    out["cpu_while_etcd_away_pct"].append(cpu)


def throughput(bed: TestBed, impl: str, backend: str, args) -> dict:
    cluster(bed, impl, backend)
    a, b = bed.nodes[0], bed.nodes[1]
    for node in (a, b):
        node.add_pod()
    time.sleep(0.5)
    pids = [a.pid, b.pid, *a.all_children(), *b.all_children()]
    rates, per_gb = [], []
    for _ in range(args.repeat):
        c0 = [cpu_seconds(p) for p in pids]
        try:
            raw = iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), args.seconds, 1)
            rate = received_bits_per_second(raw) or 0.0
        except subprocess.TimeoutExpired:  # no TCP through this data path at all
            rate = 0.0
        cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, c0, strict=True))
        rates.append(rate / 1e9 if rate else float("nan"))
        per_gb.append(cpu / (rate / 1e9 * args.seconds / 8) if rate else float("nan"))
    return {"gbps": summary(rates), "cpu_s_per_gb": summary(per_gb)}


def measure_once(bed: TestBed, impl: str, args, out: dict) -> None:
    a, peer = bed.nodes[0], bed.nodes[1]
    cluster(bed, impl)
    own = f"/coreos.com/network/subnets/{a.subnet.network_address}-26"
    wipe(a)  # cold: no device, no subnet file, no lease
    bed.etcd.ctl("del", own)
    time.sleep(1)
    env, ready = timed_start(a, impl, peer)
    out["cold_subnet_env_s"].append(env)
    out["cold_ready_s"].append(ready)
    a.stop()
    a.proc = None
    env, ready = timed_start(a, impl, peer)
    out["warm_subnet_env_s"].append(env)
    out["warm_ready_s"].append(ready)
    time.sleep(2)
    rss, cpu = idle(a, args.idle)
    out["rss_2_peers_mb"].append(rss)
    out["cpu_2_peers_pct"].append(cpu)
    in_node(a, "scale_writer.py", bed.etcd.url, "put", "1000")
    deadline = time.monotonic() + 60
    while route_count(a) < 1000 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    rss, cpu = idle(a, args.idle)
    out["rss_1000_peers_mb"].append(rss)
    out["cpu_1000_peers_pct"].append(cpu)
    in_node(a, "scale_writer.py", bed.etcd.url, "delete", "1000")
    time.sleep(2)
    extra = ["any-proto"] if impl == "upstream" else []
    probe = json.loads(in_node(a, "convergence_probe.py", bed.etcd.url, str(args.events), *extra))
    out["lease_to_route_ms"] += probe["sequential"]["add_ms"]
    out["txn_100_all_ms"].append(probe["transaction_100"]["all_added_ms"])
    out["txn_100_lost"].append(probe["transaction_100"]["lost"])
    out["burst_1000_all_ms"].append(probe["concurrent_1000"]["all_added_ms"])
    out["burst_1000_lost"].append(probe["concurrent_1000"]["lost"])


METRICS = (
    "cold_subnet_env_s",
    "cold_ready_s",
    "warm_subnet_env_s",
    "warm_ready_s",
    "rss_2_peers_mb",
    "cpu_2_peers_pct",
    "rss_1000_peers_mb",
    "cpu_1000_peers_pct",
    "lease_to_route_ms",
    "txn_100_all_ms",
    "txn_100_lost",
    "burst_1000_all_ms",
    "burst_1000_lost",
    "after_etcd_restart_ms",
    "survived_etcd_restart",
    "after_etcd_away_10s_ms",
    "after_etcd_away_60s_ms",
    "cpu_while_etcd_away_pct",
    "member_cut_off_ms",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3, help="iperf3 seconds per run")
    parser.add_argument("--events", type=int, default=100, help="sequential leases per repeat")
    parser.add_argument("--idle", type=float, default=5, help="seconds of idle CPU sampling")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument(
        "--away",
        nargs="*",
        type=float,
        default=[10.0, 60.0],
        choices=[10.0, 60.0],
        help="seconds etcd is away (frozen, then killed) before a lease is written",
    )
    parser.add_argument(
        "--dev-tree",
        action="store_true",
        help="run this tree's pyflannel with this interpreter, not the installed wheel",
    )
    args = parser.parse_args()
    if upstream_flanneld() is None:
        print("no upstream flanneld (../shared/anchors/flanneld-v0.20.2)", file=sys.stderr)
        return 2
    compiled()
    python = sys.executable if args.dev_tree else installed_python()
    samples = {impl: {m: [] for m in METRICS} for impl in IMPLEMENTATIONS}
    flows: dict[str, dict] = {impl: {} for impl in IMPLEMENTATIONS}
    with TestBed(hosts=3) as bed:
        bed.python = python
        for round_ in range(args.repeat):
            for impl in IMPLEMENTATIONS if round_ % 2 == 0 else IMPLEMENTATIONS[::-1]:
                measure_once(bed, impl, args, samples[impl])
                print(f"round {round_ + 1} {impl}: done", flush=True)
                write_results("upstream-partial", {"samples": samples}, "")
        for backend in args.backends:
            for impl in IMPLEMENTATIONS:
                flows[impl][backend] = throughput(bed, impl, backend, args)
                print(f"{backend} {impl}: {flows[impl][backend]['gbps']['median']:.2f} Gbit/s")
                write_results("upstream-partial", {"samples": samples, "throughput": flows}, "")
        # Last: v0.20.2's watch can panic when etcd restarts (its bug), and then it may keep
        # failing at start on this etcd, so nothing is measured after this.
        for impl in IMPLEMENTATIONS:
            for _ in range(args.repeat):
                try:
                    cluster(bed, impl)
                except AssertionError:  # did not even start (upstream, after the panic)
                    samples[impl]["after_etcd_restart_ms"].append(float("nan"))
                    samples[impl]["survived_etcd_restart"].append(0.0)
                    continue
                samples[impl]["after_etcd_restart_ms"].append(etcd_restart_lease(bed, bed.nodes[0]))
                samples[impl]["survived_etcd_restart"].append(
                    float(all(n.running for n in bed.nodes))
                )
                for away in args.away:
                    etcd_away(bed, impl, away, samples[impl])
            print(f"etcd restarts {impl}: done", flush=True)
    # The member in use cut off from its peers: a 3-member etcd of its own.
    with TestBed(hosts=2, etcd_members=3) as bed:
        bed.python = python
        for round_ in range(args.repeat):
            for impl in IMPLEMENTATIONS if round_ % 2 == 0 else IMPLEMENTATIONS[::-1]:
                endpoints = recovery.followers_first(bed)
                cluster(bed, impl, endpoints=endpoints)
                member = bed.etcd.member_for(endpoints.split(",")[0])
                samples[impl]["member_cut_off_ms"].append(
                    recovery.member_cut_off(bed, bed.nodes[0], member, has_route)
                )
        print("member cut off: done", flush=True)
    stats = {impl: {m: summary(v) for m, v in samples[impl].items()} for impl in IMPLEMENTATIONS}

    def row(name: str, py: float, up: float) -> list:
        ok = up == up and py == py and up  # NaN (never) or 0: no ratio
        return [name, py, up, f"{py / up:.2f}" if ok else "-"]

    rows = []
    for metric in METRICS:
        py, up = stats["pyflannel"][metric], stats["upstream"][metric]
        rows.append(row(metric, py["median"], up["median"]))
        if metric == "lease_to_route_ms":
            rows.append(row("lease_to_route_p99_ms", py["p99"], up["p99"]))
    for backend in args.backends:
        for what in ("gbps", "cpu_s_per_gb"):
            py = flows["pyflannel"][backend][what]["median"]
            up = flows["upstream"][backend][what]["median"]
            rows.append(row(f"{backend} {what}", py, up))
    text = table(
        ["measure (median)", "pyflannel", "upstream v0.20.2", "pyflannel / upstream"], rows
    )
    text += (
        f"\n\n3 nodes, {args.repeat} alternating rounds; iperf3 {args.seconds} s x {args.repeat}"
    )
    write_results("upstream", {"samples": samples, "stats": stats, "throughput": flows}, text)
    labels = ["cold env", "warm env", "RSS 2", "RSS 1000", "lease->route", "vxlan Gbit/s"]
    keys = [
        "cold_subnet_env_s",
        "warm_subnet_env_s",
        "rss_2_peers_mb",
        "rss_1000_peers_mb",
        "lease_to_route_ms",
    ]
    ratios = [stats["pyflannel"][k]["median"] / stats["upstream"][k]["median"] for k in keys]
    if "vxlan" in args.backends:
        ratios.append(
            flows["pyflannel"]["vxlan"]["gbps"]["median"]
            / flows["upstream"]["vxlan"]["gbps"]["median"]
        )
    plot(
        "upstream",
        "pyflannel / upstream flanneld v0.20.2 (1.0 = equal)",
        {"ratio": (labels[: len(ratios)], ratios)},
        "measure",
        "ratio",
        kind="bar",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
