"""The status document: what is programmed per peer, whether the node is healthy, and how to
show it. Pure: the daemon and ``pyflannel status`` (when the daemon is down) build the same
document from different sources; this module judges and renders it.

Exit codes of ``pyflannel status``: 0 healthy, 1 unhealthy (the node's overlay is or will be
broken), 2 degraded (works now, but needs attention: e.g. the store, etcd, unreachable).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from ipaddress import ip_network

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.plan import KernelState, Peer, Peer6, with_path_mtu
from pyflannel.ops.etcd_advice import etcd_advice, member_line
from pyflannel.ops.mesh.health import PeerHealth, explain
from pyflannel.ops.mesh.path_mtu import mss_for
from pyflannel.ops.status.document import PacketPriority, PeerHalf6, PeerRow, StatusDoc
from pyflannel.traffic import br_netfilter

HEALTHY, UNHEALTHY, DEGRADED = 0, 1, 2
ENTRIES = ("neighbour", "fdb", "route")  # the kernel entries a peer may need, in table order


def peer_row(peer: Peer, actual: KernelState, path_mtu: dict | None = None) -> PeerRow:
    """One line of the peers table: what the peer needs and whether the kernel has it; on a
    dual-stack network its IPv6 half under ``ipv6`` (or why it is not programmed)."""
    v6 = None
    if peer.v6 is not None:
        v6 = PeerHalf6(
            subnet=str(peer.v6.subnet),
            public_ip=str(peer.v6.public_ip),
            encap=peer.v6.encap,
            vtep_mac=peer.v6.vtep_mac or None,
            **_programmed(peer.v6, actual, path_mtu),  # type: ignore[arg-type]
        )
    elif peer.v6_problem:
        v6 = PeerHalf6(problem=peer.v6_problem)
    return PeerRow(
        subnet=str(peer.subnet),
        public_ip=str(peer.public_ip),
        encap=peer.encap,
        vtep_mac=peer.vtep_mac or None,
        udp_port=peer.udp_port or None,
        public_key=peer.public_key or "",
        ipv6=v6,
        site=peer.site,
        **_programmed(peer, actual, path_mtu),  # type: ignore[arg-type]  # neighbour, fdb, route
    )


def _programmed(
    half: Peer | Peer6, actual: KernelState, path_mtu: dict | None = None
) -> dict[str, bool | None]:
    """``path_mtu``: the routes that carry a fixed path MTU (their wanted value has it)."""
    want = with_path_mtu(half.entries, path_mtu or {})
    return {
        name: None if not wanted else all(have.get(k) == v for k, v in wanted.items())
        for name, (_, wanted), (_, have) in zip(
            ENTRIES, want.tables(), actual.tables(), strict=True
        )
    }


def peer_rows(
    peers: Iterable[Peer], actual: KernelState, path_mtu: dict | None = None
) -> list[PeerRow]:
    rows = (peer_row(p, actual, path_mtu) for p in peers)
    return sorted(rows, key=lambda r: ip_network(r.subnet))


def _missing(half: PeerRow | PeerHalf6) -> list[str]:
    return [name for name in ENTRIES if getattr(half, name) is False]


def assess(doc: StatusDoc) -> tuple[list[str], list[str]]:
    """(problems, warnings) in words an operator can act on."""
    problems, warnings = [], []
    daemon, store, kind = doc.daemon, doc.store, doc.store_kind
    if not daemon.running:
        problems.append(f"daemon not running ({daemon.reason or 'no answer'})")
    elif not daemon.ready:
        problems.append(f"daemon not ready: {', '.join(daemon.not_ready) or 'starting'}")
    if not store.reachable:
        warnings.append(f"{kind} unreachable: {store.last_error or 'no answer'}")
    lease = doc.lease
    if lease is None or not lease.subnet:
        problems.append("no subnet lease")
    elif lease.expires_in_s is not None and lease.expires_in_s < 3600:
        warnings.append(f"lease expires in {lease.expires_in_s:.0f} s")
    backend = doc.backend
    if backend is not None and backend.device and not backend.device_present:
        problems.append(f"device {backend.device} missing")
    if backend is not None and backend.fact("fallback"):
        warnings.append(f"running in UDP fallback: {backend.fact('fallback')}")
    if doc.config_change:
        warnings.append(
            f"the network config in {kind} changed since start ({doc.config_change}): "
            "restart the daemon to apply it"
        )
    if doc.subnet_env is not None:
        problems += [f"subnet.env: {p}" for p in doc.subnet_env.problems]
    rules = doc.iptables
    if rules is not None and rules.enabled and not rules.present:
        problems.append(f"{rules.mode} rules missing: {rules.last_problem or 'drift'}")
    if doc.bridge_nf is not None:
        found = br_netfilter.problem(doc.bridge_nf, dual_stack=bool(doc.network6))
        if found is not None:
            warnings.append(f"{found[0]}; fix: {found[1]}")
    mtu = (backend.mtu if backend is not None else None) or 0
    for row in doc.peers:
        if missing := _missing(row):
            problems.append(f"peer {row.subnet}: {', '.join(missing)} not programmed")
        v6 = row.ipv6
        if v6 is not None and (missing6 := _missing(v6)):
            problems.append(f"peer {v6.subnet}: IPv6 {', '.join(missing6)} not programmed")
        if v6 is not None and v6.problem:
            warnings.append(f"peer {row.subnet}: IPv6 not programmed: {v6.problem}")
        if healed := via_udp(row):
            warnings.append(f"peer {row.subnet} at {row.public_ip}: {healed}")
        for half in row.halves():  # a dual-stack peer: a path per family
            if half.path is None or not half.path.state:
                continue
            state = half.path.state
            words = explain(state, half.subnet, half.public_ip, mtu, half.path.loss)
            cannot = row.heal.cannot_heal if half is row and row.heal is not None else ""
            fixed = half.path.path_mtu
            if state == PeerHealth.BLACK_HOLE and fixed:
                warnings.append(
                    f"path to {half.subnet} carries {fixed} bytes, not {mtu}: fixed on that "
                    f"path since {_ago(half.path.path_mtu_since)} (route MTU {fixed}, MSS clamp "
                    f"{mss_for(fixed, 6 if ':' in half.subnet else 4)}); every other peer keeps "
                    f"{mtu}"
                )
            elif state in (PeerHealth.UNREACHABLE, PeerHealth.BLACK_HOLE, PeerHealth.TCP_BROKEN):
                problems.append(f"{words} (not moved to UDP: {cannot})" if cannot else words)
            elif state == PeerHealth.LOSSY:
                warnings.append(words)
    return problems, warnings


def exit_code(doc: StatusDoc) -> int:
    problems, warnings = assess(doc)
    return UNHEALTHY if problems else DEGRADED if warnings else HEALTHY


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    return f"{seconds / 3600:.1f} h ago" if seconds > 5400 else f"{seconds:.0f} s ago"


def _duration(seconds: float | None, reservation: bool = False) -> str:
    if reservation:
        return "no expiry (reservation)"
    if seconds is None:
        return "unknown"
    h, rem = divmod(int(max(seconds, 0)), 3600)
    return f"{h}h{rem // 60:02d}m"


def _mark(value: bool | None) -> str:
    return {True: "ok", False: "MISSING", None: "-"}[value]


def via_udp(row: PeerRow) -> str:
    """ "via udp: vxlan blocked since ..." for a peer the path healer moved to UDP, else ""."""
    heal = row.heal
    if heal is None or heal.via != "udp":
        return ""
    since = time.strftime("%H:%M:%S", time.localtime(heal.since or 0))
    trying = " (trying it: not yet answered over it)" if heal.trying else ""
    return (
        f"via udp{trying}: {heal.why} since {since} ({_ago(heal.since)}); VXLAN probed every "
        f"round, back after {heal.back_after} clean rounds"
    )


def session(e: PeerEndpoint) -> str:
    """ "sent to 203.0.113.7:40001 (learned from its packets; its lease says …), handshake
    12 s ago" for a WireGuard peer."""
    where = (
        f"{e.endpoint} (learned from its packets; its lease says {e.published})"
        if e.learned
        else e.published
    )
    return f"WireGuard: sent to {where}, handshake {_ago(e.last_handshake)}"


def _entries_and_path(half: PeerRow | PeerHalf6) -> str:
    """The neighbour/FDB/route marks and the probed path of a peer row (or its IPv6 half)."""
    path = half.path
    rtt = f"{path.rtt_ms:.2f}" if path is not None and path.rtt_ms is not None else "-"
    marks = " ".join(f"{_mark(getattr(half, k)):<7}" for k in ENTRIES)
    state = path.state if path is not None else "-"
    if path is not None and path.path_mtu:
        state = f"fixed at {path.path_mtu}"
    return f"{marks} {state:<15} {rtt}"


def render(doc: StatusDoc, etcd_tuning: dict[str, float] | None = None) -> str:
    """The one-screen answer to "is this node's overlay healthy, and if not, why?"."""
    problems, warnings = assess(doc)
    verdict = "UNHEALTHY" if problems else "DEGRADED" if warnings else "HEALTHY"
    lines = [f"pyflannel on this node: {verdict}"]
    lines += [f"  ! {p}" for p in problems] + [f"  ~ {w}" for w in warnings]
    lines += ["", *_daemon_lines(doc), *_store_lines(doc, etcd_tuning or {})]
    lines += _node_lines(doc) + _backend_lines(doc) + _rules_lines(doc) + _peer_lines(doc)
    return "\n".join(lines) + "\n"


def _daemon_lines(doc: StatusDoc) -> list[str]:
    d = doc.daemon
    running = (
        (f"running (pid {d.pid}, since {_ago(d.started)}, {'ready' if d.ready else 'not ready'})")
        if d.running
        else "NOT RUNNING"
    )
    return [f"daemon     {running}  version {d.version or '?'}"]


def _store_lines(doc: StatusDoc, etcd_tuning: dict[str, float]) -> list[str]:
    e, facts = doc.store, doc.store.facts
    lines = [
        f"{doc.store_kind:<10} {e.current or ', '.join(facts.endpoints)}: "
        f"{'reachable' if e.reachable else 'UNREACHABLE'}"
        + (f", revision {facts.revision}" if facts.revision else "")
        + (f", last error: {e.last_error}" if e.last_error else "")
    ]
    inst = doc.instance
    if inst is not None:
        lines.append(
            f"network    {inst.etcd_prefix} (subnet file {inst.subnet_file}, "
            f"health endpoint {inst.healthz or 'off'})"
        )
        lines += [f"           other network on this host: {o}" for o in inst.others]
    if facts.leader or facts.member_rtt_ms is not None:
        lines.append(
            f"           leader {facts.leader or 'unknown'}, "
            f"{facts.leader_changes_last_hour or 0} leader changes in the last hour"
            + (
                f", member check {facts.member_rtt_ms:.1f} ms"
                if facts.member_rtt_ms is not None
                else ""
            )
        )
    lines += [f"           member {member_line(m)}" for m in e.members]
    # Advice about etcd is not this node's health: the overlay works meanwhile, so it does
    # not change the verdict or the exit status.
    for advice in etcd_advice(list(e.members), facts.leader_changes_last_hour, **etcd_tuning):
        lines.append(f"           advice: {advice.what}: {advice.fix}")
    return lines


def _node_lines(doc: StatusDoc) -> list[str]:
    lines = []
    i, lease = doc.interface, doc.lease
    if i is not None:
        lines.append(
            f"interface  {i.name} {i.address} MTU {i.mtu}, public IP {i.public_ip}"
            + (f"; IPv6 {i.address6}, public IPv6 {i.public_ipv6}" if i.address6 else "")
        )
    if lease is not None:
        lines.append(
            f"lease      {lease.subnet} (network {doc.network or '?'}), expires in "
            f"{_duration(lease.expires_in_s, lease.reservation)}, "
            f"last renewal {_ago(lease.last_renewal)}"
            + (
                f" (took {lease.last_renewal_took_s * 1000:.0f} ms)"
                if lease.last_renewal_took_s is not None
                else ""
            )
        )
        if lease.ipv6_subnet:
            lines.append(f"           IPv6 {lease.ipv6_subnet} (network {doc.network6})")
    return lines


def _backend_lines(doc: StatusDoc) -> list[str]:
    b = doc.backend
    if b is None:
        return []
    fact = b.fact
    extra = [
        f"{label} {fact(name)}"
        for name, label in (("vni", "VNI"), ("port", "port"), ("vtep_mac", "VTEP MAC"))
        if fact(name) is not None and fact(name) != ""
    ]
    lines = [
        f"backend    {b.type} on {b.device} ({', '.join(extra)}); MTU {b.mtu}"
        + (f" = {b.mtu_reason}" if b.mtu_reason else "")
    ]
    if fact("datapath"):
        lines.append(f"           WireGuard {fact('datapath')}, public key {fact('public_key')}")
    if fact("device6"):
        lines.append(f"           IPv6 on {fact('device6')} (VTEP MAC {fact('vtep_mac6')})")
    if fact("fallback"):
        lines.append(f"           UDP FALLBACK: {fact('fallback')}")
    if fact("site"):
        relays = fact("relaying_for") or []
        outside = fact("outside") or "none known (behind NAT, no public node answers yet)"
        learned = " (as the public nodes see it: behind NAT)" if fact("outside_learned") else ""
        lines.append(
            f"site       {fact('site')}, outside {outside}{learned}"
            + (f"; relays for {', '.join(relays)}" if relays else "")
        )
    udp = b.udp
    if udp is not None:
        drops = {**udp.to_peers.drops, **{f"in:{k}": v for k, v in udp.from_peers.drops.items()}}
        lines.append(
            f"udp path   {udp.datapath}: out {udp.to_peers.packets} pkts, in "
            f"{udp.from_peers.packets} pkts, drops {drops or 'none'}"
        )
        fast = udp.fastpath
        halves = [
            f"{h} {'batched' if on else 'per packet'}"
            for h, on in (("tx", fast.tx), ("rx", fast.rx))
        ]
        halves.append(f"TSO {'on' if fast.tso else 'off'}")
        lines.append(
            f"           fast path: {', '.join(halves)}"
            + "".join(f"; {h} off: {why}" for h, why in fast.off.items())
        )
        if udp.priority is not None:
            lines.append(f"           packet threads: {_priority(udp.priority)}")
    return lines


def _priority(p: PacketPriority) -> str:
    if p.mode == "normal":
        return "ordinary priority (--udp-priority=normal)"
    if p.refused:
        return f"ordinary priority: {p.refused} (needs CAP_SYS_NICE or LimitRTPRIO=1)"
    if p.realtime:
        now = "real time (SCHED_RR 1)"
    elif p.mode == "auto":
        now = "ordinary priority (real time when neighbours hold the CPU)"
    else:
        now = "ordinary priority for now (over a fifth of a core)"
    counts = [f"real time {p.raised} times"] if p.mode == "auto" and p.raised else []
    counts += [f"{p.demotions} times over a fifth of a core"] if p.demotions else []
    return now + (f"; {', '.join(counts)}" if counts else "")


def _rules_lines(doc: StatusDoc) -> list[str]:
    lines = []
    env, rules, nf = doc.subnet_env, doc.iptables, doc.bridge_nf
    if env is not None:
        lines.append(f"subnet.env {env.path}: {'DIFFERS' if env.problems else 'matches'}")
    if rules is not None:
        what = [n for n, on in (("masquerade", rules.masquerade), ("forward", rules.forward)) if on]
        lines.append(
            f"{rules.mode:<10} {' + '.join(what) or 'off'}"
            + (f": {'in place' if rules.present else 'MISSING'}" if what else "")
        )
        if rules.site_strangers is not None:
            lines.append(
                f"site port  {rules.site_strangers} datagrams from no member's address "
                "(dropped by WireGuard unless a member's key sealed them)"
            )
    if nf is not None:
        values = [
            f"{k}={v}"
            for k, v in (("iptables", nf.iptables), ("ip6tables", nf.ip6tables))
            if v is not None
        ]
        lines.append(
            f"bridge nf  {', '.join(f'bridge-nf-call-{v}' for v in values) or 'br_netfilter not loaded'}"
        )
    return lines


def _peer_lines(doc: StatusDoc) -> list[str]:
    lines = ["", f"peers ({len(doc.peers)}):"]
    if doc.peers:
        lines.append(
            f"  {'subnet':<18} {'public IP':<15} {'encap':<6} {'VTEP MAC / port':<18} "
            "neigh   fdb     route   path (MTU)      rtt ms"
        )
    for r in doc.peers:
        lines.append(
            f"  {r.subnet:<18} {r.public_ip:<15} {r.encap:<6} "
            f"{(r.vtep_mac or r.udp_port or '-')!s:<18} {_entries_and_path(r)}"
        )
        if r.placement is not None:
            lines.append(f"    {r.placement.words}")
        if healed := via_udp(r):
            lines.append(f"    {healed}")
        if r.endpoint is not None:
            lines.append(f"    {session(r.endpoint)}")
        v6 = r.ipv6
        if v6 is not None and v6.problem:
            lines.append(f"    IPv6 not programmed: {v6.problem}")
        elif v6 is not None:
            lines.append(f"    {v6.subnet:<24} {v6.public_ip:<23} {_entries_and_path(v6)}")
    lines += [f"  ignored: {r}" for r in doc.ignored]
    return lines


def render_cluster(leases: list[dict]) -> str:
    lines = [f"{'subnet':<18} {'public IP':<15} {'backend':<8} {'expires in':<12} details"]
    for le in leases:
        lines.append(
            f"{le['subnet']:<18} {le['public_ip']:<15} {le['backend'] or 'udp':<8} "
            f"{_duration(le['expires_in_s'], le.get('reservation', False)):<12} {le.get('details', '')}"
        )
    lines.append(f"{len(leases)} leases")
    broken = [
        f"  {le['subnet']} -> {peer}: {state}"
        for le in leases
        for peer, state in sorted((le.get("paths") or {}).items())
        if state not in ("ok", "unknown")
    ]
    reporting = sum(1 for le in leases if le.get("paths") is not None)
    lines += ["", f"paths between nodes ({reporting} of {len(leases)} nodes report):"]
    lines += broken or ["  no broken path reported"]
    return "\n".join(lines) + "\n"
