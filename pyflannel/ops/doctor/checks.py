"""``pyflannel doctor``'s verdicts: each check turns what a probe found into pass/warn/fail
with advice. Pure, so every verdict (an OpenVZ host, a slow etcd disk, a skewed clock) can be
tested without such a machine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyflannel.backend.sites.relay import live
from pyflannel.ops.etcd_advice import NODE_RTT_MS, etcd_advice, member_line
from pyflannel.ops.status.document import StatusDoc
from pyflannel.traffic.br_netfilter import BridgeNf, problem

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    advice: str = ""


@dataclass
class Probe:
    """Raw facts a probe gathered (None: not determined)."""

    ok: bool | None = None
    error: str = ""
    facts: dict = field(default_factory=dict)


def _this_kernel(kernel: str) -> str:
    """``kernel``: its release (uname -r), named in findings: what a kernel can do is its own
    (Debian 12's 6.1 and 13's 6.12 differ from each other and from a VPS host's)."""
    return f"this kernel ({kernel})" if kernel else "this kernel"


def judge_vxlan(p: Probe, tun_ok: bool | None, kernel: str = "") -> Finding:
    this = _this_kernel(kernel)
    if p.ok:
        return Finding("vxlan", PASS, f"{this} creates VXLAN devices")
    fallback = "pyflannel falls back to UDP encapsulation (--backend-fallback=auto), at a few % of VXLAN's throughput"
    if tun_ok:
        return Finding(
            "vxlan",
            WARN,
            f"{this} cannot create a VXLAN device: {p.error}",
            f"Load the vxlan module (modprobe vxlan) if you can; otherwise {fallback}.",
        )
    return Finding(
        "vxlan",
        FAIL,
        f"{this} cannot create a VXLAN device: {p.error}",
        "Neither VXLAN nor TUN works: this node cannot join the overlay.",
    )


def judge_wireguard(kernel: Probe, tun_ok: bool | None, wireguard_go: str | None) -> Finding:
    """Which WireGuard this node can run for the wireguard backend: the kernel's, userspace
    wireguard-go (needs TUN and the binary), or neither."""
    if kernel.ok:
        return Finding("wireguard", PASS, "kernel WireGuard (the wireguard module works)")
    why = f"no kernel WireGuard ({kernel.error or 'not tested'})"
    if tun_ok and wireguard_go:
        return Finding("wireguard", PASS, f"userspace WireGuard: {wireguard_go}; {why}")
    missing = "wireguard-go" if not wireguard_go else "TUN device"
    return Finding(
        "wireguard",
        WARN,
        f"neither kernel nor userspace WireGuard: {why}, and no {missing}",
        "Only the wireguard backend needs it: apt install wireguard-go (and allow /dev/net/tun "
        "in a container), or load the wireguard module.",
    )


def judge_tun(p: Probe) -> Finding:
    if p.ok:
        return Finding("tun", PASS, "TUN devices work (UDP backend and fallback possible)")
    return Finding(
        "tun",
        WARN if p.ok is None else FAIL,
        f"cannot create a TUN device: {p.error}",
        "The UDP backend needs /dev/net/tun (modprobe tun; in a container, ask the host to "
        "allow the tun device).",
    )


def judge_fast_path(p: Probe, kernel: str = "") -> Finding:
    """What the UDP backend's fast path may use on this kernel: ``p.facts`` maps each feature
    (backend/udp/kernel_support.py) to None (taken) or the kernel's refusal. Refusals are not
    failures: the data path goes per packet for that half, slower, and says so."""
    this = _this_kernel(kernel)
    if p.ok is None:
        return Finding("udp fast path", PASS, f"not checked: {p.error}")
    refused = {k: why for k, why in p.facts.items() if why}
    if not refused:
        return Finding("udp fast path", PASS, f"{this} takes {', '.join(p.facts)}")
    return Finding(
        "udp fast path",
        WARN,
        f"{this} refuses " + "; ".join(f"{k} ({why})" for k, why in refused.items()),
        "The UDP backend (and the fallback from VXLAN) works without them, per packet for "
        "what is refused: fewer Gbit/s for more CPU. A newer kernel takes them (4.18+ for "
        "UDP_SEGMENT, 5.0+ for UDP_GRO).",
    )


def judge_container(markers: dict) -> Finding:
    """markers: openvz (bool), lxc (bool), kind (str from systemd/env), e.g. {'openvz': True}."""
    if markers.get("openvz"):
        return Finding(
            "container",
            WARN,
            "this is an OpenVZ container (/proc/vz without /proc/bc)",
            "OpenVZ containers share the host kernel and usually cannot create VXLAN "
            "devices: expect the UDP fallback, or run pyflannel on the host.",
        )
    kind = markers.get("kind") or ("lxc" if markers.get("lxc") else "")
    if kind:
        return Finding(
            "container",
            WARN,
            f"running inside a container ({kind})",
            "Containers share the host kernel: VXLAN and iptables need the host's "
            "permission (CAP_NET_ADMIN, the vxlan/tun modules loaded on the host).",
        )
    return Finding("container", PASS, "not a container (own kernel)")


def judge_iptables(p: Probe, masquerade_wanted: bool) -> Finding:
    if p.ok:
        return Finding("iptables", PASS, f"{p.facts.get('version', 'iptables')} usable")
    status = FAIL if masquerade_wanted else WARN
    return Finding(
        "iptables",
        status,
        f"iptables not usable: {p.error}",
        "Install iptables (apt install iptables); --ip-masq and the forward rules need it.",
    )


def judge_traffic_tools(p: Probe) -> Finding:
    """Which rule frameworks this node has, and the classic cause of dropped pod traffic:
    a legacy-iptables ruleset and an nftables one both hooking forward (a packet must pass
    both, and neither tool shows the other's rules)."""
    f = p.facts
    have = [
        f"iptables {f.get('iptables') or 'not installed'}",
        f"nftables {f.get('nft') or 'not installed'}",
    ]
    legacy, nft_forward = f.get("legacy_forward") or "", f.get("nft_forward") or []
    if legacy and nft_forward:
        return Finding(
            "traffic rules",
            WARN,
            f"{'; '.join(have)}; both hook forward: legacy iptables ({legacy}) and nftables "
            f"({', '.join(nft_forward)})",
            "A forwarded pod packet must pass both rule sets, and neither tool lists the other's "
            "rules. Use one framework: iptables-nft (update-alternatives --set iptables "
            "/usr/sbin/iptables-nft) or EnableNFTables, and move the legacy rules over.",
        )
    detail = "; ".join(have)
    if nft_forward:
        detail += f"; nftables chains on the forward hook: {', '.join(nft_forward)}"
    return Finding("traffic rules", PASS, detail)


def judge_mtu(interface: str, mtu: int | None, overhead: int = 50) -> Finding:
    if mtu is None:
        return Finding(
            "mtu",
            FAIL,
            f"no usable interface: {interface}",
            "Choose the interface that carries traffic between nodes with --iface.",
        )
    pod = mtu - overhead
    if pod < 68:
        return Finding(
            "mtu",
            FAIL,
            f"{interface} MTU {mtu} leaves {pod} bytes for pods",
            "The underlay MTU is too small for any encapsulation.",
        )
    if pod < 1280:
        return Finding(
            "mtu",
            WARN,
            f"{interface} MTU {mtu}: pods get MTU {pod}",
            "Below 1280 IPv6 breaks and many programs assume larger packets: raise the "
            "underlay MTU if you can (jumbo frames: 9000 gives pods 8950).",
        )
    return Finding(
        "mtu", PASS, f"{interface} MTU {mtu}: pods get MTU {pod} with VXLAN, {mtu - 28} with UDP"
    )


def judge_ipv6(p: Probe, dual_stack: bool | None) -> Finding:
    """Can this node carry the IPv6 half of a dual-stack network? ``p.facts``: ``address``
    (the interface's global IPv6 address or None), ``forwarding`` (net.ipv6.conf.all
    .forwarding), ``ip6tables`` (ip6tables-restore present); ``dual_stack``: the running
    daemon's network has EnableIPv6 (None: no daemon answered)."""
    f = p.facts
    address, forwarding, ip6tables = f.get("address"), f.get("forwarding"), f.get("ip6tables")
    where = f.get("interface", "the interface")
    if not dual_stack:
        what = "IPv4-only network" if dual_stack is False else "no daemon answered"
        can = f"{where} has {address}" if address else f"{where} has no global IPv6 address"
        return Finding("ipv6", PASS, f"{what}; for dual-stack: {can}")
    if not address:
        return Finding(
            "ipv6",
            FAIL,
            f"the network is dual-stack but {where} has no global IPv6 address",
            "Give the interface an IPv6 address (or choose another with --iface); the daemon "
            "cannot start without one.",
        )
    if forwarding != "1":
        return Finding(
            "ipv6",
            WARN,
            f"dual-stack on {where} ({address}), but net.ipv6.conf.all.forwarding is "
            f"{forwarding or 'unknown'}: this node does not forward pods' IPv6 packets",
            "sysctl -w net.ipv6.conf.all.forwarding=1 (and persist it in /etc/sysctl.d).",
        )
    if not ip6tables:
        return Finding(
            "ipv6",
            WARN,
            f"dual-stack on {where} ({address}); ip6tables-restore not found",
            "Install iptables (it ships ip6tables) for --ip-masq and forward rules over IPv6.",
        )
    return Finding("ipv6", PASS, f"dual-stack on {where} ({address}), IPv6 forwarding on")


def judge_etcd(
    p: Probe, leader_changes_last_hour: int | None = None, tuning: dict | None = None
) -> list[Finding]:
    """This node's round trip to etcd, each member's own view (a line per member) and what
    to do about what they show (etcd_advice)."""
    if not p.ok:
        return [
            Finding(
                "etcd",
                FAIL,
                f"etcd unreachable: {p.error}",
                "Check --etcd-endpoints, the network path and firewalls (TCP 2379), TLS files.",
            )
        ]
    f = p.facts
    members = f.get("members") or []
    advice = etcd_advice(members, leader_changes_last_hour, **(tuning or {}))
    detail = f"{f.get('endpoint', 'etcd')}: round trip {f['rtt_ms']:.1f} ms"
    if leader_changes_last_hour is not None:
        detail += (
            f", {leader_changes_last_hour} leader changes in the last hour (the daemon's view)"
        )
    slow = not members and f["rtt_ms"] > NODE_RTT_MS  # else the members' lines say it
    findings = [
        Finding(
            "etcd",
            WARN if advice or slow else PASS,
            detail,
            f"above {NODE_RTT_MS} ms every lease operation is slow; put etcd closer"
            if slow
            else "",
        )
    ]
    findings += [
        Finding(f"etcd-{m.get('name') or m.get('id')}", PASS, "member " + member_line(m))
        for m in members
    ]
    findings += [Finding(f"etcd-advice-{i}", WARN, a.what, a.fix) for i, a in enumerate(advice, 1)]
    return findings


def judge_bridge_nf(state: BridgeNf, dual_stack: bool) -> Finding:
    """Does traffic between pods on one bridge pass iptables (br_netfilter)?"""
    found = problem(state, dual_stack)
    if found is not None:
        return Finding("br_netfilter", WARN, *found)
    return Finding(
        "br_netfilter",
        PASS,
        "bridged traffic passes iptables (net.bridge.bridge-nf-call-iptables=1"
        + (", ip6tables=1)" if dual_stack else ")"),
    )


def judge_site(doc: StatusDoc | None) -> Finding | None:
    """--site: does this node have an outside address others reach it at (its own, or learned
    behind NAT from a node with an address of its own that answers), and which peers of other
    sites it reaches directly, through a relay, or not at all. None without --site."""
    backend = doc.backend if doc is not None else None
    if doc is None or backend is None or not backend.fact("site"):
        return None
    site = backend.fact("site")
    across = [r for r in doc.peers if r.placement is not None and r.placement.encrypted]
    relayed = [
        r.subnet for r in across if r.placement is not None and r.placement.path == "relayed"
    ]
    now = time.time()
    sessions = [r.subnet for r in across if r.endpoint is not None and live(r.endpoint, now)]
    if not backend.fact("outside"):
        return Finding(
            "site",
            FAIL,
            f"site {site}: behind NAT, and no node with an address of its own answers "
            f"({len(across)} of other sites, {len(sessions)} with a session): its outside address "
            "is unknown, so nodes behind other NATs cannot reach it",
            "At least one node with a public address (--public-ip) must reach this one: allow "
            "UDP to its --site-port (default 51830) out of this network, and check that node runs.",
        )
    detail = (
        f"site {site}, outside {backend.fact('outside')}"
        + (" (learned: behind NAT)" if backend.fact("outside_learned") else "")
        + f"; {len(doc.peers) - len(across)} peers in the site or without one, {len(across)} "
        f"across sites ({len(sessions)} with a session)"
    )
    if relayed:
        return Finding(
            "site",
            WARN,
            f"{detail}; relayed, no direct session: {', '.join(relayed)}",
            "Their NATs (or a firewall) keep the two ends apart; traffic flows through a relay "
            "(one more hop). A router that keeps source ports (no MASQUERADE --random) or a "
            "forwarded --site-port lets them meet directly.",
        )
    return Finding("site", PASS, detail)


def judge_port(port: int, what: str, owner: str | None, in_use: bool) -> Finding:
    if not in_use:
        return Finding(f"port-{port}", PASS, f"UDP {port} ({what}) is free")
    if owner and owner.startswith(("flannel", "pyflannel")):
        return Finding(
            f"port-{port}", PASS, f"UDP {port} ({what}) is used by {owner}: pyflannel's own"
        )
    return Finding(
        f"port-{port}",
        FAIL,
        f"UDP {port} ({what}) is in use by {owner or 'another program'}",
        "Free the port, or configure another one (Backend.Port; all nodes must agree).",
    )


def judge_clock(skew_s: float | None, now: float) -> Finding:
    if now < 1_600_000_000:  # before 2020: the clock was never set
        return Finding(
            "clock",
            FAIL,
            "the system clock is in the past (never synchronised?)",
            "Enable NTP (systemd-timesyncd, chrony): TLS certificates and lease times depend on it.",
        )
    if skew_s is None:
        return Finding(
            "clock",
            WARN,
            "could not compare the clock with etcd's",
            "Make sure NTP runs on every node.",
        )
    if abs(skew_s) > 60:
        return Finding(
            "clock", FAIL, f"clock differs from etcd's by {skew_s:+.0f} s", "Enable NTP."
        )
    if abs(skew_s) > 5:
        return Finding(
            "clock", WARN, f"clock differs from etcd's by {skew_s:+.0f} s", "Enable NTP."
        )
    return Finding("clock", PASS, f"clock within {abs(skew_s):.0f} s of etcd's")


def exit_code(findings: list[Finding]) -> int:
    statuses = {f.status for f in findings}
    return 1 if FAIL in statuses else 2 if WARN in statuses else 0


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.status.upper():<5} {f.check:<10} {f.detail}")
        if f.advice:
            lines.append(f"{'':<17}-> {f.advice}")
    code = exit_code(findings)
    lines.append({0: "all checks passed", 1: "some checks FAILED", 2: "passed with warnings"}[code])
    return "\n".join(lines) + "\n"
