"""Gathering a trace: the store (who holds which subnet, the paths nodes publish), the running
daemon's status (MTU, the path healer's moves) or subnet.env when it does not answer, this
node's kernel (route, neighbour, FDB entries, the underlay interface), its filter rules, and
active probes: an echo to the peer's public IP (small, then the underlay's full size with
don't-fragment), then through the overlay to the peer's address (small, the pod MTU with
don't-fragment, a TCP SYN), then to the destination itself."""

from __future__ import annotations

import asyncio
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network, ip_interface

from pyflannel.backend import kernel
from pyflannel.backend.kernel import Devices
from pyflannel.backend.offline import EVERYTHING, detect
from pyflannel.backend.sites.link import DEVICE as SITE_DEVICE
from pyflannel.backend.sites.relay import live
from pyflannel.errors import FlannelError
from pyflannel.kernel.netlink import Netlink
from pyflannel.ops.mesh.path_mtu import mss_for
from pyflannel.ops.mesh.path_probe import PathProber
from pyflannel.ops.status.client import StatusEndpoint, daemon_document
from pyflannel.ops.status.document import PeerRow, StatusDoc
from pyflannel.ops.trace import rules
from pyflannel.ops.trace.model import (
    Trace,
    judge_fdb,
    judge_neighbour,
    judge_route,
    judge_rules,
    locate,
    node_of,
)
from pyflannel.subnet.env_file import parse_env
from pyflannel.subnet.stores import StoreOptions, open_store

STORE_TIMEOUT = 5.0
HEALTHY_STATES = ("ok", "lossy")


async def trace(
    src: IPv4Address, dst: IPv4Address, store_options: StoreOptions, endpoint: StatusEndpoint
) -> Trace:
    t = Trace(str(src), str(dst))
    doc, _ = await asyncio.to_thread(daemon_document, endpoint, 2.0)
    env = _subnet_env(endpoint.subnet_file)
    lease = doc.lease if doc is not None else None
    backend = doc.backend if doc is not None else None
    own = (lease.subnet if lease is not None else None) or env.get("FLANNEL_SUBNET_NETWORK")
    t.pod_mtu = int((backend.mtu if backend is not None else None) or env.get("FLANNEL_MTU") or 0)
    store = open_store(store_options, timeout=STORE_TIMEOUT)
    try:
        snapshot = await asyncio.wait_for(store.leases(), STORE_TIMEOUT)
        summaries = await asyncio.wait_for(store.path_summaries(), STORE_TIMEOUT)
    except (FlannelError, TimeoutError) as e:
        t.add("store", False, f"etcd cannot be read: {e or 'timed out'}", "pyflannel doctor")
        return t
    finally:
        await store.close()
    leases = snapshot.leases
    src_lease, dst_lease = locate(src, leases), locate(dst, leases)
    if dst_lease is None:
        t.add("store", False, f"no node holds a subnet with {dst} (no lease names it)")
        return t
    t.dst_node = node_of(dst_lease, own)
    t.src_node = node_of(src_lease, own) if src_lease is not None else None
    where = t.src_node.describe() if t.src_node else "no lease: outside the network"
    t.add("store", True, f"{src}: {where}; {dst}: {t.dst_node.describe()}")
    if t.dst_node.this_node:
        t.add("destination", True, f"{dst} is on this node: delivered locally (cni0)")
        return t
    if t.src_node is None or not t.src_node.this_node:
        _published(t, summaries)
        return t
    await _local_path(t, src, dst, doc, env, summaries)
    return t


def _subnet_env(path: str) -> dict[str, str]:
    try:
        env = parse_env(open(path).read())
    except OSError:
        return {}
    if env.get("FLANNEL_SUBNET"):
        env["FLANNEL_SUBNET_NETWORK"] = str(ip_interface(env["FLANNEL_SUBNET"]).network)
    return env


def _published(t: Trace, summaries: dict[str, dict]) -> None:
    """SRC is on another node: what that node publishes of its path to DST's node."""
    assert t.src_node is not None and t.dst_node is not None
    paths = (summaries.get(t.src_node.subnet) or {}).get("paths")
    if paths is None:
        t.add(
            "published path",
            None,
            f"node {t.src_node.public_ip} publishes no path states (no prober, or upstream "
            f"flanneld): run `pyflannel trace {t.src} {t.dst}` there",
        )
        return
    state = paths.get(t.dst_node.subnet, "not probed")
    t.add(
        "published path",
        state in HEALTHY_STATES,
        f"node {t.src_node.public_ip} reports its path to {t.dst_node.subnet}: {state}",
        "" if state in HEALTHY_STATES else f"run `pyflannel trace {t.src} {t.dst}` there",
    )


async def _local_path(
    t: Trace,
    src: IPv4Address,
    dst: IPv4Address,
    doc: StatusDoc | None,
    env: dict[str, str],
    summaries: dict[str, dict],
) -> None:
    """SRC is on this node: every place from here to the destination."""
    node = t.dst_node
    assert node is not None
    network = (doc.network if doc is not None else None) or env.get("FLANNEL_NETWORK")
    row = doc.peer(node.subnet) if doc is not None else None
    placement = row.placement if row is not None else None
    if placement is not None:  # --site: where the peer is decides where it is sent
        if placement.path == "in site":
            node.public_ip = placement.address  # the backend over its inside address
        t.add("site", True, placement.words)
    facts = await _kernel(dst, src, IPv4Address(node.public_ip), network)
    heal = row.heal if row is not None else None
    healed = heal is not None and heal.via == "udp"
    dev = judge_route(t, node, facts["route"], healed)
    if dev is None:
        return
    t.encapsulation = encapsulation_of(dev)
    if (
        dev == SITE_DEVICE
        and row is not None
        and doc is not None
        and not _site_link(t, row, doc, summaries)
    ):
        return
    if heal is not None and healed:
        t.add("path healer", True, f"via udp: {heal.why} (VXLAN is probed every round)")
    elif heal is not None and heal.cannot_heal and node.backend == "vxlan":
        t.add("path healer", None, f"cannot move it to UDP: {heal.cannot_heal}")
    if t.encapsulation == "vxlan":
        if not judge_neighbour(t, node, dev, facts["neighbours"]):
            return
        if not judge_fdb(t, node, dev, facts["fdb"]):
            return
    elif t.encapsulation == "udp":
        running = doc is not None and doc.backend is not None and doc.backend.udp is not None
        t.add(
            "udp path",
            running if doc else None,
            f"flannel0 to {node.public_ip}:{node.udp_port or '?'}"
            + ("" if running or not doc else ": the UDP path is not running"),
        )
    forwarded = bool(facts["src_dev"])  # a pod's address (this node's own are local)
    verdict = _filter(rules.Packet(src, dst, facts["src_dev"], dev)) if forwarded else None
    inside = network and dst in IPv4Network(network)
    masquerading = doc is not None and doc.iptables is not None and doc.iptables.masquerade
    masq = (
        "not masqueraded (both ends inside the network)"
        if inside
        else "masqueraded (--ip-masq)"
        if masquerading
        else "not masqueraded (--ip-masq is off)"
    )
    if not judge_rules(t, verdict, forwarded, masq):
        return
    # where the peer answers on the overlay: its device's <subnet>.0, or its bridge's .1 on a
    # backend without a device (host-gw)
    default_host = 1 if node.backend in ("host-gw", "extension") else 0
    probe_host = doc.backend.probe_host if doc is not None and doc.backend else default_host
    await _probe(t, src, dst, facts, probe_host)


async def _kernel(dst, src, public_ip, network) -> dict:
    netlink = Netlink()
    try:
        return await netlink.call(_read_kernel, dst, src, public_ip, network)
    finally:
        netlink.close()


def _read_kernel(ipr, dst, src, public_ip, network) -> dict:
    found = detect(ipr, IPv4Network(network) if network else None)
    devices = found.devices if found else Devices(networks=(EVERYTHING,))
    state = kernel.read_state(ipr, devices)
    under = _route_get(ipr, public_ip)
    src_route = _route_get(ipr, src)
    return {
        "route": _route_get(ipr, dst),
        "neighbours": {str(k): v for k, v in state.neighbours.items()},
        "fdb": {k: str(v) for k, v in state.fdb.items()},
        "src_dev": src_route["dev"] if src_route and src_route["type"] != "local" else "",
        "underlay": under,
    }


def _route_get(ipr, address) -> dict | None:
    from pyflannel.kernel.iproute import NetlinkError

    try:
        msg = ipr.route("get", dst=str(address))[0]
    except (NetlinkError, IndexError):
        return None  # unreachable, or a blackhole route
    oif = msg.get_attr("RTA_OIF")
    link = ipr.get_links(oif)[0] if oif else None
    gateway = msg.get_attr("RTA_GATEWAY")
    metrics = msg.get_attr("RTA_METRICS")
    return {
        "dev": link.get_attr("IFLA_IFNAME") if link else "",
        "mtu": link.get_attr("IFLA_MTU") if link else 0,
        # a path MTU fixed on the route (ops/mesh/mtu_fixer.py); 0: none
        "route_mtu": (metrics.get_attr("RTAX_MTU") or 0) if metrics is not None else 0,
        "gateway": str(gateway) if gateway is not None else None,
        "type": {2: "local", 6: "blackhole", 7: "unreachable"}.get(msg["type"], "unicast"),
    }


def _filter(packet: rules.Packet) -> rules.Verdict | None:
    try:
        out = subprocess.run(
            ["iptables-save", "-t", "filter"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rules.decide(rules.parse(out.stdout), packet) if out.returncode == 0 else None


def encapsulation_of(dev: str) -> str:
    if dev.startswith("flannel."):
        return "vxlan"
    return {"flannel0": "udp", "flannel-wg": "wireguard", SITE_DEVICE: SITE_LINK}.get(
        dev, "none (routed)"
    )


SITE_LINK = "wireguard (site link)"


def _site_link(t: Trace, row: PeerRow, doc: StatusDoc, summaries: dict[str, dict]) -> bool:
    """A peer of another site: its WireGuard session, or, relayed, each hop's: this node's
    session with the relay, and the path the relay publishes to the peer."""
    placement = row.placement
    assert placement is not None
    if placement.path == "relayed":
        relay = doc.peer(placement.via)
        if not _session(t, "relay hop 1", relay, f"relay {placement.via}"):
            return False
        state = ((summaries.get(placement.via) or {}).get("paths") or {}).get(row.subnet)
        if state is None:
            t.add("relay hop 2", None, f"relay {placement.via} publishes no path to {row.subnet}")
            return True
        ok = True if state in HEALTHY_STATES else None if state == "unknown" else False
        t.add(
            "relay hop 2",
            ok,
            f"relay {placement.via} reports its path to {row.subnet}: {state}",
            "" if ok else f"run `pyflannel trace` on the relay ({placement.via}) to {t.dst}",
        )
        return ok is not False
    return _session(t, "site link", row, f"peer {row.subnet}")


def _session(t: Trace, place: str, row: PeerRow | None, who: str) -> bool:
    endpoint = row.endpoint if row is not None else None
    now = time.time()
    if endpoint is None or not live(endpoint, now):
        age = now - endpoint.last_handshake if endpoint and endpoint.last_handshake else None
        when = "never" if age is None else f"{age:.0f} s ago"
        t.add(
            place,
            False,
            f"no WireGuard session with {who} (last handshake: {when}; sent to "
            f"{endpoint.endpoint if endpoint else '?'})",
            "is UDP to its --site-port (51830) blocked on the way? `pyflannel doctor` on both",
        )
        return False
    age = now - endpoint.last_handshake
    t.add(
        place,
        True,
        f"WireGuard session with {who} at {endpoint.endpoint}, handshake {age:.0f} s ago",
    )
    return True


async def _probe(
    t: Trace, src: IPv4Address, dst: IPv4Address, facts: dict, probe_host: int
) -> None:
    """The active checks, underlay first; each names the place it fails. Overlay probes go
    from this node's address in its subnet to the peer's (``probe_host``: 0, the devices'
    <subnet>.0; 1, the bridges' .1)."""
    node = t.dst_node
    assert node is not None and t.src_node is not None
    public = IPv4Address(node.public_ip)
    overlay = node.overlay_address + probe_host
    own = t.src_node.overlay_address + probe_host
    under = facts["underlay"] or {}
    port = {"vxlan": "UDP 8472", "udp": f"UDP {node.udp_port or 8285}"}.get(t.encapsulation, "")
    prober = PathProber()
    prober.open()
    try:
        if t.encapsulation == SITE_LINK:
            pass  # the session is the underlay's proof (a router behind NAT answers no echo)
        elif not await prober.echo(public):
            t.add(
                "underlay",
                False,
                f"{node.public_ip} does not answer an echo on the underlay (via "
                f"{under.get('dev', '?')}): the node is down or unreachable, or ICMP is filtered",
            )
            return
        full = int(under.get("mtu") or 1500)
        if t.encapsulation == SITE_LINK:
            pass
        elif not await prober.echo(public, size=full):
            t.add(
                "underlay",
                False,
                f"{full}-byte packets (don't-fragment) to {node.public_ip} are lost, small ones "
                f"pass: the underlay path carries less than {under.get('dev', '?')}'s MTU {full}",
                "lower the MTU of the underlay interfaces to the path's, or mend the path",
            )
            return
        else:
            t.add(
                "underlay",
                True,
                f"{t.src_node.public_ip} -> {node.public_ip} via {under.get('dev', '?')} "
                f"(MTU {full}, {full}-byte packets pass){', ' + port if port else ''}",
            )
        encap = (
            t.encapsulation.upper()
            if t.encapsulation in ("vxlan", "udp")
            else "the site link"
            if t.encapsulation == SITE_LINK
            else "the route"
        )
        if not await prober.echo(overlay, source=own):
            t.add(
                "encapsulation",
                False,
                f"{encap} to {overlay} is lost while the underlay answers: something on the "
                f"way drops {port or 'it'} (a firewall, a hypervisor filter)",
                "allow it between the nodes' public IPs; `pyflannel doctor`",
            )
            return
        fixed = (facts["route"] or {}).get("route_mtu", 0)
        carried = t.pod_mtu
        if t.pod_mtu and not await prober.echo(overlay, size=t.pod_mtu, source=own):
            if 0 < fixed < t.pod_mtu and await prober.echo(overlay, size=fixed, source=own):
                t.add(
                    "path mtu",
                    True,
                    f"the path to {overlay} carries {fixed} bytes, not the pod MTU "
                    f"{t.pod_mtu}: fixed on this path (route MTU {fixed} lock, TCP MSS "
                    f"clamped to {mss_for(fixed, 4)}; --fix-path-mtu)",
                )
                carried = fixed
            else:
                t.add(
                    "encapsulation",
                    False,
                    f"full-size packets ({t.pod_mtu} bytes, the pod MTU) to {overlay} are lost "
                    f"inside {encap}, small ones pass: an MTU black hole",
                    "check the underlay MTU on both nodes (`pyflannel status` on each); "
                    "--fix-path-mtu fixes it per path within a few probe rounds",
                )
                return
        if not await prober.syn(overlay, own):
            t.add(
                "encapsulation",
                False,
                f"ICMP to {overlay} passes inside {encap} but TCP does not (checksum offload "
                "through NAT is the known cause)",
                "ethtool -K flannel.1 tx-checksum-ip-generic off; see `pyflannel doctor`",
            )
            return
        t.add(
            "encapsulation",
            True,
            f"{encap} to {overlay}: small, {carried}-byte (don't-fragment) and TCP probes pass",
        )
        if dst in (overlay, public):
            return
        if not await prober.echo(dst, source=own) and not await prober.syn(dst, own):
            t.add(
                "destination",
                False,
                f"node {node.public_ip} answers but {dst} does not: the pod is not there, or "
                f"that node's bridge or FORWARD rules drop it",
                f"on {node.public_ip}: is the pod running (crictl pods), and what do "
                "`iptables -S FORWARD` and `ip route get` say there?",
            )
            return
        t.add("destination", True, f"{dst} answers (ICMP or TCP) from {own}")
    finally:
        prober.close()
