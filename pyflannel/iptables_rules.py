"""Upstream flannel's iptables rules, as data (pkg/trafficmngr/iptables, interop §11).

Pure. Rule text and order are upstream's (current releases: jump rules appended), so tools
and runbooks that compare ``iptables -S`` output keep working. Rules are written in the
canonical order ``iptables -S`` prints them, so the same strings serve for applying and for
checking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
VXLAN_CHAIN = "FLANNEL-VXLAN-IN"
VXLAN_COMMENT = "pyflannel vxlan peers"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
RANDOM_FULLY_SINCE = (1, 6, 2)


@dataclass(frozen=True)
class Rule:
    table: str  # "nat" | "filter"
    chain: str
    spec: str  # everything after "-A <chain> ", as iptables -S prints it

    @property
    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


def masquerade_rules(cluster: IPv4Network, pod: IPv4Network, random_fully: bool) -> list[Rule]:
    c = f'-m comment --comment "{MASQ_COMMENT}"'
    masq = "-j MASQUERADE --random-fully" if random_fully else "-j MASQUERADE"
    return [
        Rule("nat", "POSTROUTING", f"{c} -j {MASQ_CHAIN}"),
        # Marked by kube-proxy: it masquerades those itself.
        Rule("nat", MASQ_CHAIN, f"-m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
        # Pod to pod, either way: never masqueraded.
        Rule("nat", MASQ_CHAIN, f"-s {pod} -d {cluster} {c} -j RETURN"),
        Rule("nat", MASQ_CHAIN, f"-s {cluster} -d {pod} {c} -j RETURN"),
        # From outside to our pods: keep the client's address.
        Rule("nat", MASQ_CHAIN, f"! -s {cluster} -d {pod} {c} -j RETURN"),
        # Pods to the outside world (not multicast): masquerade.
        Rule("nat", MASQ_CHAIN, f"-s {cluster} ! -d 224.0.0.0/4 {c} {masq}"),
        # Host or outside to remote pods: masquerade so replies come back through us.
        Rule("nat", MASQ_CHAIN, f"! -s {cluster} -d {cluster} {c} {masq}"),
    ]


def forward_rules(cluster: IPv4Network) -> list[Rule]:
    c = f'-m comment --comment "{FORWARD_COMMENT}"'
    return [
        Rule("filter", "FORWARD", f"{c} -j {FORWARD_CHAIN}"),
        Rule("filter", FORWARD_CHAIN, f"-s {cluster} {c} -j ACCEPT"),
        Rule("filter", FORWARD_CHAIN, f"-d {cluster} {c} -j ACCEPT"),
    ]


def vxlan_peer_rules(port: int, peers: list[str]) -> list[Rule]:
    """pyflannel only (--vxlan-peer-filter): VXLAN datagrams are accepted from the public IPs
    of known peers only. One rule per peer, checked in order: meant for small clusters."""
    c = f'-m comment --comment "{VXLAN_COMMENT}"'
    return (
        [Rule("filter", "INPUT", f"-p udp -m udp --dport {port} {c} -j {VXLAN_CHAIN}")]
        + [Rule("filter", VXLAN_CHAIN, f"-s {ip}/32 {c} -j RETURN") for ip in peers]
        + [Rule("filter", VXLAN_CHAIN, f"{c} -j DROP")]
    )


def our_chains(rules: list[Rule]) -> dict[str, str]:
    """chain -> table for the chains pyflannel owns (everything but the built-in jumps)."""
    return {r.chain: r.table for r in rules if r.chain.startswith("FLANNEL-")}


def restore_payload(table: str, rules: list[Rule], jumps_present: dict[str, int]) -> str:
    """One ``iptables-restore --noflush`` transaction for ``table``: declaring our chains
    creates or flushes them (so rules of an old subnet vanish), each existing copy of a jump
    rule is deleted and one appended, then our chains are filled."""
    lines = [f"*{table}"]
    mine = [r for r in rules if r.table == table]
    lines += [
        f":{chain} - [0:0]"
        for chain in dict.fromkeys(r.chain for r in mine if r.chain.startswith("FLANNEL-"))
    ]
    for r in mine:
        if not r.chain.startswith("FLANNEL-"):
            lines += [f"-D {r.chain} {r.spec}"] * jumps_present.get(r.line, 0)
            lines.append(r.line)
    lines += [r.line for r in mine if r.chain.startswith("FLANNEL-")]
    return "\n".join(lines) + "\nCOMMIT\n"


def drift(rules: list[Rule], listed: dict[str, list[str]]) -> list[str]:
    """What differs between ``rules`` and ``iptables -t <table> -S`` output per table: missing
    lines, extra lines in our chains, duplicated jumps. Empty when all is as it should be."""
    problems = []
    for table in sorted({r.table for r in rules}):
        have = listed.get(table, [])
        want = [r for r in rules if r.table == table]
        for r in want:
            count = have.count(r.line)
            if count == 0:
                problems.append(f"missing in {table}: {r.line}")
            elif count > 1 and not r.chain.startswith("FLANNEL-"):
                problems.append(f"duplicated in {table}: {r.line}")
        expected = {r.line for r in want}
        for chain in our_chains(want):
            problems += [
                f"unexpected in {table}: {line}"
                for line in have
                if line.startswith(f"-A {chain} ") and line not in expected
            ]
    return problems


def parse_version(text: str) -> tuple[int, ...]:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9)."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
