"""``pyflannel doctor --probe [SUBNET]``: the mesh prober's probes, once, from this node to
its peers (the running daemon's peers, read from its /status), with a verdict per path; and
what this node's VXLAN device says about the checksum offload known to break TCP through NAT."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.backend.plan import Peer, Peer6
from pyflannel.ops.doctor.checks import FAIL, PASS, WARN, Finding
from pyflannel.ops.mesh.health import PeerHealth, explain
from pyflannel.ops.mesh.prober import MeshProber
from pyflannel.ops.status.document import PeerHalf6, StatusDoc

ROUNDS = 3  # the prober's verdicts need three results of each kind


async def probe_paths(doc: StatusDoc, only: str | None = None) -> list[Finding]:
    mtu = (doc.backend.mtu if doc.backend is not None else None) or 0
    # the backend's choice: its device's address, or its bridge's
    probe_host = doc.backend.probe_host if doc.backend is not None else 0
    peers = [
        Peer(IPv4Network(r.subnet), IPv4Address(r.public_ip), r.encap, v6=_half6(r.ipv6))
        for r in doc.peers
        if only in (None, "all", r.subnet, r.public_ip)
    ]
    if not peers:
        return [
            Finding(
                "probe", FAIL, f"no peer {only or ''} to probe", "Is the daemon running and ready?"
            )
        ]
    prober = MeshProber(
        peers=lambda: peers,
        target=lambda p: p.subnet.network_address + probe_host,
        mtu=lambda: mtu,
        interval=0.2,
        rate=100,
    )
    await prober.run(rounds=ROUNDS)
    findings = []
    for half in (h for p in peers for h in (p, p.v6) if h is not None):
        record = prober.records[half.subnet]
        state = record.state
        words = explain(state, str(half.subnet), str(half.public_ip), mtu, record.loss)
        status = PASS if state is PeerHealth.OK else WARN if state is PeerHealth.LOSSY else FAIL
        rtt = f", RTT {record.rtt_median:.2f} ms" if record.rtt_median is not None else ""
        findings.append(
            Finding(
                f"path {half.subnet}",
                status,
                words or f"ok: small, {mtu}-byte and TCP probes pass{rtt}",
            )
        )
    return findings


def _half6(half: PeerHalf6 | None) -> Peer6 | None:
    """A status row's IPv6 half (dual-stack), if it is programmed."""
    if half is None or not half.programmed:
        return None
    return Peer6(IPv6Network(half.subnet), IPv6Address(half.public_ip), half.encap)


def judge_offload(device: str, doc: StatusDoc | None) -> Finding:
    """tx-checksum-ip-generic on the VXLAN device: on by default, and known to stall TCP
    through NAT on some kernels (upstream #1279, #1282, #2152). A warning when the daemon's
    probes already see TCP broken while ICMP passes."""
    try:
        out = subprocess.run(["ethtool", "-k", device], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Finding("checksum offload", PASS, f"not checked: {e}")
    if out.returncode != 0:
        return Finding("checksum offload", PASS, f"{device}: not present (nothing to check)")
    line = next((ln for ln in out.stdout.splitlines() if "tx-checksum-ip-generic" in ln), "")
    on = ": on" in line
    broken = [
        r.subnet
        for r in (doc.peers if doc is not None else ())
        if r.path is not None and r.path.state == PeerHealth.TCP_BROKEN
    ]
    advice = f"ethtool -K {device} tx-checksum-ip-generic off"
    if on and broken:
        return Finding(
            "checksum offload",
            WARN,
            f"{device} has tx-checksum-ip-generic on and TCP through the overlay is broken to "
            f"{', '.join(broken)}",
            f"The known VXLAN checksum offload bug (through NAT): {advice}",
        )
    detail = f"{device}: tx-checksum-ip-generic {'on' if on else 'off'}"
    if on:
        detail += f" (if TCP through the overlay stalls behind NAT: {advice})"
    return Finding("checksum offload", PASS, detail)
