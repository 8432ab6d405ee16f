"""``pyflannel doctor``'s probes: try things for real, where they cannot hurt.

Device creation is tried in a throwaway network namespace (removed afterwards), so nothing
is left in the node's own namespace; iptables is only listed, never changed.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyflannel.errors import FlannelError
from pyflannel.kernel.iface import IfaceChoice
from pyflannel.ops.doctor.checks import (
    Finding,
    Probe,
    judge_bridge_nf,
    judge_clock,
    judge_container,
    judge_etcd,
    judge_fast_path,
    judge_iptables,
    judge_ipv6,
    judge_mtu,
    judge_port,
    judge_site,
    judge_traffic_tools,
    judge_tun,
    judge_vxlan,
    judge_wireguard,
)
from pyflannel.ops.status.client import StatusEndpoint
from pyflannel.subnet.stores import StoreOptions
from pyflannel.traffic import br_netfilter

if TYPE_CHECKING:
    from pyflannel.etcd.client import EtcdClient


def _run(*cmd: str, timeout: float = 10, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def probe_devices() -> tuple[Probe, Probe, Probe, Probe]:
    """Create a VXLAN, a TUN and a WireGuard device in a throwaway namespace, and try there
    what the UDP fast path asks of the kernel (backend/udp/kernel_support.py)."""
    ns = f"pf{os.getpid()}x99-doctor"
    if _run("ip", "netns", "add", ns).returncode != 0:
        untested = Probe(None, "not tested")
        return (
            Probe(None, "cannot create a network namespace to test in"),
            untested,
            untested,
            untested,
        )
    try:
        v = _run(
            "ip", "-n", ns, "link", "add", "pfdoctor", "type", "vxlan", "id", "4242", "dstport", "0"
        )
        t = _run("ip", "-n", ns, "tuntap", "add", "mode", "tun", "name", "pfdoctor0")
        w = _run("ip", "-n", ns, "link", "add", "pfdoctorwg", "type", "wireguard")
        return (
            Probe(v.returncode == 0, v.stderr.strip()),
            Probe(t.returncode == 0, t.stderr.strip()),
            Probe(w.returncode == 0, w.stderr.strip()),
            probe_fast_path(ns),
        )
    finally:
        _run("ip", "netns", "del", ns)


def probe_fast_path(ns: str) -> Probe:
    """The fast path's kernel features, tried in namespace ``ns`` by a child Python (this
    process stays in its own namespace)."""
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    module = "pyflannel.backend.udp.kernel_support"
    path = os.pathsep.join(p for p in sys.path if p)  # this pyflannel, as installed
    try:
        child = _run(
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            module,
            timeout=20,
            env={**os.environ, "PYTHONPATH": path},
        )
        return Probe(True, facts=json.loads(child.stdout))
    except (OSError, subprocess.TimeoutExpired) as e:
        return Probe(None, f"the probe did not run: {e}")
    except ValueError:
        return Probe(None, f"the probe failed: {child.stderr.strip()[-300:]}")


def wireguard_go() -> str | None:
    from pyflannel.backend.wireguard.userspace import find_binary

    return find_binary()


def probe_container() -> dict:
    markers = {"openvz": Path("/proc/vz").exists() and not Path("/proc/bc").exists(), "kind": ""}
    try:
        markers["kind"] = Path("/run/systemd/container").read_text().strip()
    except OSError:
        pass
    try:
        environ = Path("/proc/1/environ").read_bytes().split(b"\0")
        kind = next(
            (e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"container=")), ""
        )
        markers["kind"] = markers["kind"] or kind
    except OSError:
        pass
    if not markers["kind"] and Path("/.dockerenv").exists():
        markers["kind"] = "docker"
    return markers


def probe_iptables() -> Probe:
    if shutil.which("iptables") is None:
        return Probe(False, "the iptables command is not installed")
    version = _run("iptables", "--version")
    listing = _run("iptables", "-w", "-t", "nat", "-S")
    if listing.returncode != 0:
        return Probe(False, listing.stderr.strip())
    return Probe(True, facts={"version": version.stdout.strip()})


def probe_traffic_tools() -> Probe:
    """iptables (and its backend), nft, and who hooks forward: legacy iptables (rules or a
    drop policy in FORWARD) and nftables base chains (iptables-nft's own tables aside)."""
    facts: dict = {}
    if shutil.which("iptables"):
        facts["iptables"] = _run("iptables", "--version").stdout.strip().removeprefix("iptables ")
    legacy_cmd = "iptables" if "legacy" in facts.get("iptables", "") else "iptables-legacy"
    if shutil.which(legacy_cmd):
        listing = _run(legacy_cmd, "-w", "-S", "FORWARD").stdout.splitlines()
        rules = [line for line in listing if line.startswith("-A FORWARD")]
        drop = "-P FORWARD DROP" in listing
        if rules or drop:
            facts["legacy_forward"] = f"{len(rules)} rules" + (", policy DROP" if drop else "")
    if shutil.which("nft"):
        facts["nft"] = (
            _run("nft", "--version").stdout.split()[1] if _run("nft", "--version").stdout else "?"
        )
        chains = _run("nft", "-j", "list", "chains")
        try:
            items = json.loads(chains.stdout or "{}").get("nftables", [])
        except ValueError:
            items = []
        compat = {"filter", "nat", "mangle", "raw", "security"}  # iptables-nft's tables
        facts["nft_forward"] = [
            f"{c['family']} {c['table']} {c['name']} (priority {c.get('prio')}, policy {c.get('policy')})"
            for item in items
            for c in (item.get("chain"),)
            if c
            and c.get("hook") == "forward"
            and not (c["family"] in ("ip", "ip6") and c["table"] in compat)
        ]
    return Probe(True, facts=facts)


@dataclass(frozen=True)
class DoctorOptions:
    """What the checks need of the node's options."""

    store: StoreOptions = field(default_factory=StoreOptions)
    iface: IfaceChoice = field(default_factory=IfaceChoice)
    endpoint: StatusEndpoint = field(default_factory=StatusEndpoint)
    ip_masq: bool = False
    udp_fallback_port: int = 8285


def probe_interface(o: DoctorOptions) -> tuple[str, int | None, str | None]:
    """The external interface as the daemon would choose it: its name (or why there is none),
    its MTU, and its first global IPv6 address (for the ipv6 finding), from one read."""
    from pyflannel.errors import InterfaceError
    from pyflannel.kernel.iface import choose_external
    from pyflannel.kernel.iproute import IPRoute

    try:
        with IPRoute() as ipr:
            ext, interfaces = choose_external(
                ipr,
                iface=o.iface.iface,
                iface_regex=o.iface.iface_regex,
                public_ip=o.iface.public_ip,
                can_reach=o.iface.can_reach,
            )
    except InterfaceError as e:
        return str(e), None, None
    chosen = next(i for i in interfaces if i.index == ext.index)
    address6 = chosen.best_address6()
    return ext.name, ext.mtu, str(address6) if address6 else None


def probe_ipv6(interface: str, address6: str | None) -> Probe:
    """IPv6 forwarding and ip6tables, with the interface's IPv6 address (probe_interface)."""
    facts: dict = {
        "ip6tables": shutil.which("ip6tables-restore") is not None,
        "interface": interface,
        "address": address6,
    }
    try:
        facts["forwarding"] = Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip()
    except OSError:
        facts["forwarding"] = None  # IPv6 disabled in this kernel or namespace
    return Probe(True, facts=facts)


def probe_port(port: int) -> tuple[bool, str | None]:
    """(in use?, who: one of our devices if it is theirs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return False, None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return True, str(e)
    from pyflannel.kernel.iproute import IPRoute

    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            if (
                name.startswith("flannel.")
                and data is not None
                and data.get_attr("IFLA_VXLAN_PORT") == port
            ):
                return True, name
    if port == 8285 and Path("/sys/class/net/flannel0").exists():
        return True, "flannel0 (pyflannel's UDP backend)"
    daemon = _pyflannel_holding(port)
    if daemon is not None:
        return True, f"pyflannel (pid {daemon}: its UDP port, before the UDP path runs)"
    return True, None


def _pyflannel_holding(port: int) -> int | None:
    """The pid of a pyflannel process holding a UDP socket on ``port``, if one does (a VXLAN
    node listens on its UDPPort until its UDP path starts)."""
    inodes = set()
    try:
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    except (OSError, ValueError, IndexError):
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"pyflannel" not in (proc / "cmdline").read_bytes():
                continue
            if any(str(fd.readlink()) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


async def probe_etcd(o: StoreOptions) -> tuple[Probe, float | None]:
    """Round trips, every member's own view (the leader it knows, its /metrics), and the
    clock difference (from HTTP Date)."""
    from pyflannel.etcd.store import client_for  # only when etcd is probed

    client = client_for(o, timeout=3)
    try:
        await _first_member_that_answers(client)
        rtts = []
        for _ in range(5):
            t0 = time.perf_counter()
            await asyncio.wait_for(client.status(), 5)
            rtts.append((time.perf_counter() - t0) * 1000)
        endpoint = client.endpoint
        try:
            members = await asyncio.wait_for(client.members(), 10)
        except (FlannelError, TimeoutError):
            members = []  # the member answered status: reachability is proven
    except (FlannelError, TimeoutError) as e:
        return Probe(False, str(e) or "timed out"), None
    finally:
        await client.close()
    facts = {"endpoint": endpoint.url, "rtt_ms": sorted(rtts)[len(rtts) // 2], "members": members}
    skew = None
    try:
        date = await asyncio.to_thread(_server_date, endpoint.url, o)
        if date:
            skew = time.time() - email.utils.parsedate_to_datetime(date).timestamp()
    except OSError:
        pass  # the clock check says it could not tell
    return Probe(True, facts=facts), skew


async def _first_member_that_answers(client: EtcdClient) -> None:
    """Move the client to the first endpoint that answers (a failed call moves it to the next
    one): one member down is not "etcd unreachable"; every member down is."""
    from pyflannel.etcd.client import EtcdUnavailable

    for left in reversed(range(len(client.endpoints))):
        try:
            await asyncio.wait_for(client.status(), 5)
            return
        except (EtcdUnavailable, TimeoutError):
            if not left:
                raise


def _server_date(url: str, o: StoreOptions) -> str | None:
    """The member's clock, from the Date header of its smallest answer (/version); the
    members' /metrics are read by the client (members())."""
    from pyflannel.etcd.tls import TLSFiles, client_context

    context = None
    if url.startswith("https://"):
        context = client_context(TLSFiles(o.cafile, o.certfile, o.keyfile), alpn="http/1.1")
    with urllib.request.urlopen(f"{url}/version", timeout=5, context=context) as resp:
        return resp.headers.get("Date")


async def run_checks(o: DoctorOptions, etcd_tuning: dict | None = None) -> list[Finding]:
    vxlan, tun, wireguard, fast_path = await asyncio.to_thread(probe_devices)
    kernel = platform.release()
    etcd, skew = await probe_etcd(o.store)
    interface, mtu, address6 = await asyncio.to_thread(probe_interface, o)
    findings = [
        judge_vxlan(vxlan, tun.ok, kernel),
        judge_tun(tun),
        judge_fast_path(fast_path, kernel),
        judge_wireguard(wireguard, tun.ok, wireguard_go()),
        judge_container(probe_container()),
        judge_iptables(await asyncio.to_thread(probe_iptables), o.ip_masq),
        judge_traffic_tools(await asyncio.to_thread(probe_traffic_tools)),
        judge_mtu(interface, mtu),
    ]
    for port, what in ((8472, "VXLAN"), (o.udp_fallback_port, "UDP backend")):
        in_use, owner = await asyncio.to_thread(probe_port, port)  # sync netlink: not in the loop
        findings.append(judge_port(port, what, owner, in_use))
    findings.append(judge_clock(skew, time.time()))
    from pyflannel.ops.doctor.mesh import judge_offload
    from pyflannel.ops.status.client import daemon_document

    doc, _ = await asyncio.to_thread(daemon_document, o.endpoint, 3.0)
    leader_changes = doc.store.facts.leader_changes_last_hour if doc is not None else None
    findings += judge_etcd(etcd, leader_changes, etcd_tuning)
    dual_stack = None if doc is None else bool(doc.network6)
    where = interface if mtu is not None else "the external interface (none found)"
    findings.append(judge_ipv6(probe_ipv6(where, address6), dual_stack))
    findings.append(judge_bridge_nf(br_netfilter.read(), bool(dual_stack)))
    site = judge_site(doc)
    if site is not None:
        findings.append(site)
    device = (doc.backend.device if doc is not None and doc.backend else None) or "flannel.1"
    if device.startswith("flannel."):
        findings.append(await asyncio.to_thread(judge_offload, device, doc))
    return findings
