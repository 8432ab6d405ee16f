"""``python -m testbed.demo``: a 3-node pyflannel cluster in network namespaces.

Starts etcd and three daemons, puts a pod behind each node, sends traffic between every pair
of pods over the VXLAN overlay (over both families with ``--dual-stack``), shows the leases in
etcd and the kernel entries on one node, then tears everything down (also on Ctrl-C or
failure). ``--minions``: the nodes are booted Debian machines running the Debian package
under systemd.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time

from testbed import netns
from testbed.bed import VXLAN_CONFIG, TestBed
from testbed.iperf import iperf, received_bits_per_second


def say(text: str = "") -> None:
    print(text, flush=True)


def section(title: str) -> None:
    say(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def iperf_line(a, b) -> str:
    """A 2-second iperf3 TCP run from a's pod to b's pod, as one line."""
    bps = received_bits_per_second(iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds=2))
    if not bps:
        return "iperf3 did not report a result"
    return f"iperf3 TCP pod {a.pod_ip} -> pod {b.pod_ip}: {bps / 1e9:.2f} Gbit/s over VXLAN"


def pods(bed) -> int:
    """Every pod pings every other one, and iperf3 between two; the pairs that failed."""
    section("pod-to-pod traffic over the overlay")
    failures = 0
    for src in bed.nodes:
        for dst in bed.nodes:
            if src is dst:
                continue
            for address in (dst.pod_ip, dst.pod_ip6):  # pod_ip6: on a dual-stack network
                if address is None:
                    continue
                result = src.ping(address, count=3, interval=0.1)
                ok = result.received == result.sent == 3
                failures += not ok
                rtt = f"{sorted(result.rtts)[len(result.rtts) // 2]:.3f} ms" if result.rtts else "-"
                source = src.pod_ip if address.version == 4 else src.pod_ip6
                say(
                    f"{'ok  ' if ok else 'FAIL'} pod {source} ({src.ns}) -> pod {address} "
                    f"({dst.ns}): {result.received}/{result.sent} replies, median RTT {rtt}"
                )
    if shutil.which("iperf3") and len(bed.nodes) >= 2:
        say(iperf_line(bed.nodes[0], bed.nodes[1]))
    return failures


def containers(bed) -> int:
    """Busybox containers by podman, one per node, through the flannel CNI plugin; each pings
    the others. The number of pairs that failed."""
    from testbed import podman

    missing = podman.available()
    if missing:
        say(
            f"--containers needs {missing} (apt install podman containernetworking-plugins busybox-static)"
        )
        return 1
    section("containers by podman, through the flannel CNI plugin")
    rootfs = podman.make_rootfs(bed.workdir / "rootfs")  # removed with the bed
    shells = [podman.PodmanShell(node, rootfs) for node in bed.nodes]
    failures = 0
    try:
        addresses = []
        for i, shell in enumerate(shells):
            addresses.append(shell.run(f"demo{i + 1}"))
            say(
                f"{shell.node.ns}: podman run --network cbr0 (flannel -> bridge, host-local): container demo{i + 1} at {addresses[-1]}"
            )
        section("container-to-container traffic over the overlay")
        for i, shell in enumerate(shells):
            for j, address in enumerate(addresses):
                if i == j:
                    continue
                code, _ = shell.exec(f"demo{i + 1}", f"ping -c 2 -W 2 {address}")
                failures += code != 0
                say(
                    f"{'ok  ' if code == 0 else 'FAIL'} container demo{i + 1} ({addresses[i]}) -> demo{j + 1} ({address})"
                )
    finally:
        for shell in shells:
            shell.close()
    return failures


def minions_demo(hosts: int, config: dict) -> int:
    """The demo on booted Debian minions: the package built and installed with apt, pyflannel
    under systemd on each; the number of pod pairs that failed."""
    from pathlib import Path

    from testbed import rootfs
    from testbed.minion_bed import MinionBed
    from testbed.package import build_deb

    section("the Debian package")
    started = time.monotonic()
    deb = build_deb(Path("dist"))
    say(
        f"scripts/build-deb: {deb} ({deb.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s"
    )
    section("the minions' root file system (cached; the first run builds it, ~1.5 min)")
    started = time.monotonic()
    layers = rootfs.minion(rootfs.package_dependencies(deb))
    say(
        f"Debian 12 with systemd and pyflannel's dependencies: ready in {time.monotonic() - started:.0f} s"
    )
    upper = Path(tempfile.mkdtemp(prefix="pf-demo-")) / "package-layer"
    try:
        started = time.monotonic()
        layers = rootfs.with_package(layers, deb, upper)
        say(f"apt-get install ./{deb.name}: {time.monotonic() - started:.1f} s")
        with MinionBed(hosts=hosts, layers=layers) as bed:
            failures = _minions(bed, config)
            section("tearing down")
    finally:
        rootfs.remove_tree(upper.parent)
    say("all minions, namespaces and etcd removed")
    return failures


def _minions(bed, config: dict) -> int:
    bed.put_config(config)
    say(f"etcd {bed.etcd.url}; etcdctl put /coreos.com/network/config '{json.dumps(config)}'")
    section("booting the minions (systemd starts pyflannel.service, enabled by the package)")
    for node, seconds in zip(bed.nodes, bed.boot(), strict=True):
        say(f"{node.minion.name}: up, pyflannel ready, in {seconds:.2f} s")
        node.add_pod()
    node = bed.nodes[0]
    section(f"on {node.minion.name}: systemctl status pyflannel")
    say(node.systemctl("status", "--no-pager", "-n", "5", "pyflannel", check=False).stdout.rstrip())
    for node in bed.nodes:
        section(f"on {node.minion.name}: pyflannel status")
        say(node.status_cli().stdout.rstrip())
    return pods(bed)


SITES_DELAY_MS = 15  # one way, between the sites and etcd in "de"


def sites_demo() -> int:
    """The reference article's cluster: "de" (two nodes, a provider's private LAN beside
    their public addresses, etcd), an "oslo" office (two nodes behind the office's NAT
    router) and a "home" node behind a NAT that maps each flow to a random port; the
    connections of oslo and home to etcd delayed. Every pair of pods pinged, each pair's
    path shown. The pairs that failed."""
    from testbed.delay import DelayedPaths, set_delay
    from testbed.nat import SitesBed, outside_ip

    sites = {"de": {1, 2}, "oslo": {3, 4}, "home": {5}}
    with SitesBed(
        hosts=5, sites=sites, natted={3, 4, 5}, behind={4: 3}, symmetric=frozenset({5})
    ) as bed:
        section("the sites")
        for node in bed.nodes:
            where = bed.site_of(node)
            if node.index in bed.natted:
                router = bed.behind.get(node.index, node.index)
                how = f"behind the NAT router at {outside_ip(router)}"
                if router in bed.symmetric:
                    how += " (a new random port for every flow)"
            else:
                how = f"public {node.underlay_ip}, private LAN {bed.lan_ip(node)}"
            if node.index in bed.natted:
                how = f"{node.underlay_ip} {how}"
            say(f"{node.ns}: site {where}, {how}")
        delay_file = bed.workdir / "delay_ms"
        set_delay(delay_file, SITES_DELAY_MS)
        relays = [
            DelayedPaths(n.ns, [(bed.etcd_ip, 2379)], delay_file, 15380).start()
            for n in bed.nodes
            if bed.site_of(n) != "de"
        ]
        say(f"etcd {bed.etcd.url} in de; oslo and home reach it {2 * SITES_DELAY_MS} ms away")
        try:
            config = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
            bed.put_config(config)
            say(f"etcdctl put /coreos.com/network/config '{json.dumps(config)}'")
            section("starting pyflannel with --site on every node")
            for node in bed.nodes:
                node.start(*bed.site_args(node), private_run=True)
                say(f"{node.ns}: pyflannel run {' '.join(node.daemon_command()[4:])}")
            for node in bed.nodes:
                node.wait_ready()
                node.add_pod()
            return _sites_traffic(bed)
        finally:
            for relay in relays:
                relay.stop()
            section("tearing down")


def _sites_traffic(bed) -> int:
    section("every pod pings every other (a relay forms within ~20 s where NATs keep two apart)")
    failures = 0
    for src in bed.nodes:
        for dst in bed.nodes:
            if src is dst:
                continue
            deadline = time.monotonic() + 40
            while True:
                result = src.ping(dst.pod_ip, count=3, interval=0.1)
                if result.received == 3 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            ok = result.received == 3
            failures += not ok
            rows = {r["subnet"]: r for r in src.status()["peers"]}
            placement = (rows.get(str(dst.subnet)) or {}).get("placement") or {}
            say(
                f"{'ok  ' if ok else 'FAIL'} {bed.site_of(src)}/{src.ns} -> "
                f"{bed.site_of(dst)}/{dst.ns}: {result.received}/3, "
                f"{placement.get('words', 'no placement')}"
            )
    section("node records in etcd (beside upstream's leases)")
    out = bed.etcd.ctl("get", "/coreos.com/network/pyflannel/nodes/", "--prefix").stdout
    say(out.rstrip())
    node = bed.nodes[0]
    section(f"pyflannel status on {node.ns}")
    say(node.status_cli().stdout.rstrip())
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    parser.add_argument(
        "--containers",
        action="store_true",
        help="the pods are real podman containers attached by pyflannel's flannel CNI plugin",
    )
    parser.add_argument(
        "--dual-stack",
        action="store_true",
        help="a dual-stack network (EnableIPv6, IPv6Network fd10::/48): pods get an address "
        "of each family and every pair is pinged over both",
    )
    parser.add_argument(
        "--minions",
        action="store_true",
        help="the nodes are booted Debian 12 machines (systemd-nspawn) with the Debian package "
        "installed by apt: pyflannel runs as pyflannel.service under systemd",
    )
    parser.add_argument(
        "--sites",
        action="store_true",
        help="the article's cluster: a 'de' site with a private LAN, an 'oslo' office of two "
        "nodes behind NAT, a 'home' node behind another NAT; every pair's path shown",
    )
    args = parser.parse_args(argv)
    netns.sweep()
    if args.sites:
        failures = sites_demo()
        say("all namespaces, daemons and etcd removed")
        if failures:
            say(f"{failures} pod pairs could not reach each other")
        return 1 if failures else 0
    config = dict(VXLAN_CONFIG)
    if args.dual_stack:
        config.update(EnableIPv6=True, IPv6Network="fd10::/48")
    if args.minions:
        failures = minions_demo(args.hosts, config)
        if failures:
            say(f"{failures} pod pairs could not reach each other")
        return 1 if failures else 0
    failures = 0
    with TestBed(hosts=args.hosts, mtu=args.mtu) as bed:
        section("etcd and the network config")
        say(f"etcd {bed.etcd.url} in namespace {bed.lan}")
        bed.put_config(config)
        say(f"etcdctl put /coreos.com/network/config '{json.dumps(config)}'")

        section("starting pyflannel on every node")
        started = time.monotonic()
        for node in bed.nodes:
            node.start()
            say(f"{node.ns}: {' '.join(node.daemon_command()[2:])}")
        for node in bed.nodes:
            env = node.wait_ready()
            say(
                f"{node.ns} ready after {time.monotonic() - started:.2f} s: "
                f"FLANNEL_SUBNET={env['FLANNEL_SUBNET']} FLANNEL_MTU={env['FLANNEL_MTU']}"
                + (f" FLANNEL_IPV6_SUBNET={env['FLANNEL_IPV6_SUBNET']}" if args.dual_stack else "")
            )
            if not args.containers:
                node.add_pod()

        section("leases in etcd")
        for key, value in sorted(bed.leases().items()):
            say(f"{key}\n    {value}")

        node = bed.nodes[0]
        section(f"kernel state on {node.ns}")
        for cmd in (
            ["ip", "-d", "link", "show", "flannel.1"],
            ["ip", "route", "show", "proto", "152"],
            ["ip", "neigh", "show", "dev", "flannel.1"],
            ["bridge", "fdb", "show", "dev", "flannel.1"],
            *(
                [
                    ["ip", "-6", "route", "show", "proto", "152"],
                    ["bridge", "fdb", "show", "dev", "flannel-v6.1"],
                ]
                if args.dual_stack
                else []
            ),
        ):
            say(f"$ {' '.join(cmd)}")
            say(node.run(*cmd).stdout.rstrip())

        failures += containers(bed) if args.containers else pods(bed)
        section("tearing down")
    say("all namespaces, daemons and etcd removed")
    if failures:
        say(f"{failures} pod pairs could not reach each other")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
