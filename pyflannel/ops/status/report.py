"""The status document: what is programmed per peer, whether the node is healthy, and how to
show it. Pure: the daemon and ``pyflannel status`` (when the daemon is down) build the same
document from different sources; this module judges and renders it.

Exit codes of ``pyflannel status``: 0 healthy, 1 unhealthy (the node's overlay is or will be
broken), 2 degraded (works now, but needs attention: e.g. the store, etcd, unreachable).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pyflannel.backend.plan import KernelState, Peer, Peer6
from pyflannel.ops.etcd_advice import etcd_advice, member_line
from pyflannel.ops.mesh.health import PeerHealth, explain
from pyflannel.traffic import br_netfilter

HEALTHY, UNHEALTHY, DEGRADED = 0, 1, 2


def peer_row(peer: Peer, actual: KernelState) -> dict:
    """One line of the peers table: what the peer needs and whether the kernel has it; on a
    dual-stack network its IPv6 half under ``ipv6`` (or why it is not programmed)."""
    row: dict = {
        "subnet": str(peer.subnet),
        "public_ip": str(peer.public_ip),
        "encap": peer.encap,
        "vtep_mac": peer.vtep_mac or None,
        "udp_port": peer.udp_port or None,
        **({"public_key": peer.public_key} if peer.public_key else {}),
        **_programmed(peer, actual),
    }
    if peer.v6 is not None:
        row["ipv6"] = {
            "subnet": str(peer.v6.subnet),
            "public_ip": str(peer.v6.public_ip),
            "encap": peer.v6.encap,
            "vtep_mac": peer.v6.vtep_mac or None,
            **_programmed(peer.v6, actual),
        }
    elif peer.v6_problem:
        row["ipv6"] = {"problem": peer.v6_problem}
    return row


def _programmed(half: Peer | Peer6, actual: KernelState) -> dict[str, bool | None]:
    want = half.entries
    return {
        name: None if not wanted else all(have.get(k) == v for k, v in wanted.items())
        for name, (_, wanted), (_, have) in zip(
            ("neighbour", "fdb", "route"), want.tables(), actual.tables(), strict=True
        )
    }


def peer_rows(peers: Iterable[Peer], actual: KernelState) -> list[dict]:
    return sorted(
        (peer_row(p, actual) for p in peers),
        key=lambda r: tuple(int(x) for x in r["subnet"].split("/")[0].split(".")),
    )


def assess(doc: dict) -> tuple[list[str], list[str]]:
    """(problems, warnings) in words an operator can act on."""
    problems, warnings = [], []
    daemon = doc.get("daemon", {})
    if not daemon.get("running"):
        problems.append(f"daemon not running ({daemon.get('reason', 'no answer')})")
    elif not daemon.get("ready"):
        problems.append(f"daemon not ready: {', '.join(daemon.get('not_ready', [])) or 'starting'}")
    kind, store = _store(doc)
    if not store.get("reachable"):
        warnings.append(f"{kind} unreachable: {store.get('last_error') or 'no answer'}")
    lease = doc.get("lease") or {}
    if not lease.get("subnet"):
        problems.append("no subnet lease")
    elif lease.get("expires_in_s") is not None and lease["expires_in_s"] < 3600:
        warnings.append(f"lease expires in {lease['expires_in_s']:.0f} s")
    backend = doc.get("backend") or {}
    if backend.get("device") and not backend.get("device_present", True):
        problems.append(f"device {backend['device']} missing")
    if backend.get("fallback"):
        warnings.append(f"running in UDP fallback: {backend['fallback']}")
    if doc.get("config_change"):
        warnings.append(
            f"the network config in {kind} changed since start ({doc['config_change']}): "
            "restart the daemon to apply it"
        )
    env = doc.get("subnet_env") or {}
    problems += [f"subnet.env: {p}" for p in env.get("problems", [])]
    iptables = doc.get("iptables") or {}
    if iptables.get("enabled") and not iptables.get("present"):
        problems.append(
            f"{iptables.get('mode', 'iptables')} rules missing: "
            f"{iptables.get('last_problem') or 'drift'}"
        )
    if "bridge_nf" in doc:
        state = br_netfilter.BridgeNf(doc["bridge_nf"]["iptables"], doc["bridge_nf"]["ip6tables"])
        found = br_netfilter.problem(state, dual_stack=bool(doc.get("network6")))
        if found is not None:
            warnings.append(f"{found[0]}; fix: {found[1]}")
    mtu = (doc.get("backend") or {}).get("mtu") or 0
    for row in doc.get("peers", []):
        missing = [k for k in ("neighbour", "fdb", "route") if row.get(k) is False]
        if missing:
            problems.append(f"peer {row['subnet']}: {', '.join(missing)} not programmed")
        v6 = row.get("ipv6") or {}
        missing6 = [k for k in ("neighbour", "fdb", "route") if v6.get(k) is False]
        if missing6:
            problems.append(f"peer {v6['subnet']}: IPv6 {', '.join(missing6)} not programmed")
        if v6.get("problem"):
            warnings.append(f"peer {row['subnet']}: IPv6 not programmed: {v6['problem']}")
        healed = via_udp(row)
        if healed:
            warnings.append(f"peer {row['subnet']} at {row['public_ip']}: {healed}")
        for half in (row, v6):  # a dual-stack peer: a path per family
            path = half.get("path") or {}
            state = path.get("state", "")
            if not state:
                continue
            words = explain(state, half["subnet"], half["public_ip"], mtu, path.get("loss", 0.0))
            cannot = (half.get("heal") or {}).get("cannot_heal")
            if state in (PeerHealth.UNREACHABLE, PeerHealth.BLACK_HOLE, PeerHealth.TCP_BROKEN):
                problems.append(f"{words} (not moved to UDP: {cannot})" if cannot else words)
            elif state == PeerHealth.LOSSY:
                warnings.append(words)
    return problems, warnings


def _store(doc: dict) -> tuple[str, dict]:
    """The store's kind and its section of the document (etcd: "etcd")."""
    kind = doc.get("store", "etcd")
    return kind, doc.get(kind) or {}


def exit_code(doc: dict) -> int:
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


def _mark(value) -> str:
    return {True: "ok", False: "MISSING", None: "-"}[value]


def via_udp(row: dict) -> str:
    """ "via udp: vxlan blocked since ..." for a peer the path healer moved to UDP, else ""."""
    heal = row.get("heal") or {}
    if heal.get("via") != "udp":
        return ""
    since = time.strftime("%H:%M:%S", time.localtime(heal["since"]))
    trying = " (trying it: not yet answered over it)" if heal.get("trying") else ""
    return (
        f"via udp{trying}: {heal['why']} since {since} ({_ago(heal['since'])}); VXLAN probed every "
        f"round, back after {heal['back_after']} clean rounds"
    )


def _entries_and_path(half: dict) -> str:
    """The neighbour/FDB/route marks and the probed path of a peer row (or its IPv6 half)."""
    path = half.get("path") or {}
    rtt = f"{path['rtt_ms']:.2f}" if path.get("rtt_ms") is not None else "-"
    marks = " ".join(f"{_mark(half[k]):<7}" for k in ("neighbour", "fdb", "route"))
    return f"{marks} {path.get('state', '-'):<15} {rtt}"


def render(doc: dict) -> str:
    """The one-screen answer to "is this node's overlay healthy, and if not, why?"."""
    problems, warnings = assess(doc)
    verdict = "UNHEALTHY" if problems else "DEGRADED" if warnings else "HEALTHY"
    (kind, e), d, i = _store(doc), doc.get("daemon", {}), doc.get("interface") or {}
    lease, b = doc.get("lease") or {}, doc.get("backend") or {}
    env, ipt = doc.get("subnet_env") or {}, doc.get("iptables") or {}
    lines = [f"pyflannel on this node: {verdict}"]
    lines += [f"  ! {p}" for p in problems] + [f"  ~ {w}" for w in warnings]
    running = (
        (
            f"running (pid {d.get('pid')}, since {_ago(d.get('started'))}, "
            f"{'ready' if d.get('ready') else 'not ready'})"
        )
        if d.get("running")
        else "NOT RUNNING"
    )
    lines += [
        "",
        f"daemon     {running}  version {d.get('version', '?')}",
        f"{kind:<10} {e.get('current') or ', '.join(e.get('endpoints', []))}: "
        f"{'reachable' if e.get('reachable') else 'UNREACHABLE'}"
        + (f", revision {e['revision']}" if e.get("revision") else "")
        + (f", last error: {e['last_error']}" if e.get("last_error") else ""),
    ]
    inst = doc.get("instance") or {}
    if inst:
        lines.append(
            f"network    {inst.get('etcd_prefix')} (subnet file {inst.get('subnet_file')}, "
            f"health endpoint {inst.get('healthz') or 'off'})"
        )
        lines += [f"           other network on this host: {o}" for o in inst.get("others", [])]
    if e.get("leader") or e.get("member_rtt_ms") is not None:
        lines.append(
            f"           leader {e.get('leader') or 'unknown'}, "
            f"{e.get('leader_changes_last_hour', 0)} leader changes in the last hour"
            + (
                f", member check {e['member_rtt_ms']:.1f} ms"
                if e.get("member_rtt_ms") is not None
                else ""
            )
        )
    lines += [f"           member {member_line(m)}" for m in e.get("members", [])]
    # Advice about etcd is not this node's health: the overlay works meanwhile, so it does
    # not change the verdict or the exit status.
    tuning = doc.get("etcd_tuning") or {}
    for advice in etcd_advice(e.get("members") or [], e.get("leader_changes_last_hour"), **tuning):
        lines.append(f"           advice: {advice.what}: {advice.fix}")
    if i:
        lines.append(
            f"interface  {i.get('name')} {i.get('address')} MTU {i.get('mtu')}, public IP {i.get('public_ip')}"
            + (
                f"; IPv6 {i['address6']}, public IPv6 {i.get('public_ipv6')}"
                if i.get("address6")
                else ""
            )
        )
    if lease:
        lines.append(
            f"lease      {lease.get('subnet')} (network {doc.get('network', '?')}), expires in "
            f"{_duration(lease.get('expires_in_s'), lease.get('reservation', False))}, "
            f"last renewal {_ago(lease.get('last_renewal'))}"
            + (
                f" (took {lease['last_renewal_took_s'] * 1000:.0f} ms)"
                if lease.get("last_renewal_took_s") is not None
                else ""
            )
        )
        if lease.get("ipv6_subnet"):
            lines.append(f"           IPv6 {lease['ipv6_subnet']} (network {doc.get('network6')})")
    if b:
        extra = []
        if b.get("vni") is not None:
            extra.append(f"VNI {b['vni']}")
        if b.get("port"):
            extra.append(f"port {b['port']}")
        if b.get("vtep_mac"):
            extra.append(f"VTEP MAC {b['vtep_mac']}")
        lines.append(
            f"backend    {b.get('type')} on {b.get('device')} ({', '.join(extra)}); MTU {b.get('mtu')}"
            + (f" = {b['mtu_reason']}" if b.get("mtu_reason") else "")
        )
        if b.get("datapath"):
            lines.append(f"           WireGuard {b['datapath']}, public key {b.get('public_key')}")
        if b.get("device6"):
            lines.append(f"           IPv6 on {b['device6']} (VTEP MAC {b.get('vtep_mac6')})")
        if b.get("fallback"):
            lines.append(f"           UDP FALLBACK: {b['fallback']}")
        udp = b.get("udp")
        if udp:
            drops = {
                **udp["to_peers"]["drops"],
                **{f"in:{k}": v for k, v in udp["from_peers"]["drops"].items()},
            }
            lines.append(
                f"udp path   {udp['datapath']}: out {udp['to_peers']['packets']} pkts, in "
                f"{udp['from_peers']['packets']} pkts, drops {drops or 'none'}"
            )
            fast = udp.get("fastpath") or {}
            halves = [f"{h} {'batched' if fast.get(h) else 'per packet'}" for h in ("tx", "rx")]
            halves.append(f"TSO {'on' if fast.get('tso') else 'off'}")
            lines.append(
                f"           fast path: {', '.join(halves)}"
                + "".join(f"; {h} off: {why}" for h, why in fast.get("off", {}).items())
            )
    if env:
        lines.append(
            f"subnet.env {env.get('path')}: {'matches' if not env.get('problems') else 'DIFFERS'}"
        )
    if ipt:
        what = [n for n in ("masquerade", "forward") if ipt.get(n)]
        mode = ipt.get("mode", "iptables")
        lines.append(
            f"{mode:<10} {' + '.join(what) or 'off'}"
            + (f": {'in place' if ipt.get('present') else 'MISSING'}" if what else "")
        )
    nf = doc.get("bridge_nf")
    if nf:
        values = [
            f"{k}={v}"
            for k, v in (("iptables", nf["iptables"]), ("ip6tables", nf["ip6tables"]))
            if v is not None
        ]
        lines.append(
            f"bridge nf  {', '.join(f'bridge-nf-call-{v}' for v in values) or 'br_netfilter not loaded'}"
        )
    peers = doc.get("peers", [])
    lines += ["", f"peers ({len(peers)}):"]
    if peers:
        lines.append(
            f"  {'subnet':<18} {'public IP':<15} {'encap':<6} {'VTEP MAC / port':<18} "
            "neigh   fdb     route   path (MTU)      rtt ms"
        )
        for r in peers:
            lines.append(
                f"  {r['subnet']:<18} {r['public_ip']:<15} {r['encap']:<6} "
                f"{(r['vtep_mac'] or r['udp_port'] or '-')!s:<18} {_entries_and_path(r)}"
            )
            if healed := via_udp(r):
                lines.append(f"    {healed}")
            v6 = r.get("ipv6") or {}
            if v6.get("problem"):
                lines.append(f"    IPv6 not programmed: {v6['problem']}")
            elif v6:
                lines.append(
                    f"    {v6['subnet']:<24} {v6['public_ip']:<23} {_entries_and_path(v6)}"
                )
    for r in doc.get("ignored", []):
        lines.append(f"  ignored: {r}")
    return "\n".join(lines) + "\n"


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
