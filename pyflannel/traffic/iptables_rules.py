"""Upstream flannel's iptables rules, as data (pkg/trafficmngr/iptables, interop §11).

Pure. Rule text and order are upstream's (current releases: jump rules appended), so tools
and runbooks that compare ``iptables -S`` output keep working. Rules are written in the
canonical order ``iptables -S`` prints them, so the same strings serve for applying and for
checking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from pyflannel.traffic.ownership import (
    OTHERS,
    OURS,
    SHARED,
    Cluster,
    names_network_inside,
    shared_texts,
)

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
VXLAN_CHAIN_PREFIX = "FLANNEL-VXLAN-"  # + the VXLAN port: one chain per network
SITE_CHAIN_PREFIX = "FLANNEL-SITE-"  # + the site link's port (--site): one network per port
MSS_CHAIN = "FLANNEL-MSS"  # pyflannel's MSS clamps (mangle), shared like upstream's chains
SHARED_CHAINS = (MASQ_CHAIN, FORWARD_CHAIN, MSS_CHAIN)  # shared by all networks on the host
VXLAN_COMMENT = "pyflannel vxlan peers"
SITE_COMMENT = "pyflannel site link members"
STRANGERS_COMMENT = "pyflannel site link: from no member"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
MSS_COMMENT = "pyflannel path mtu"
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


def multicast(cluster: Cluster) -> str:
    """The multicast range of the cluster's family (ip6tables: ff00::/8)."""
    return "ff00::/8" if cluster.version == 6 else "224.0.0.0/4"


def masquerade_rules(cluster: Cluster, pod: Cluster, random_fully: bool) -> list[Rule]:
    """The same for both families (ip6tables with the IPv6 network and subnet)."""
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
        Rule("nat", MASQ_CHAIN, f"-s {cluster} ! -d {multicast(cluster)} {c} {masq}"),
        # Host or outside to remote pods: masquerade so replies come back through us.
        Rule("nat", MASQ_CHAIN, f"! -s {cluster} -d {cluster} {c} {masq}"),
    ]


def forward_rules(cluster: Cluster) -> list[Rule]:
    c = f'-m comment --comment "{FORWARD_COMMENT}"'
    return [
        Rule("filter", "FORWARD", f"{c} -j {FORWARD_CHAIN}"),
        Rule("filter", FORWARD_CHAIN, f"-s {cluster} {c} -j ACCEPT"),
        Rule("filter", FORWARD_CHAIN, f"-d {cluster} {c} -j ACCEPT"),
    ]


def mss_rules(clamps: dict[Cluster, int]) -> list[Rule]:
    """pyflannel only: TCP SYNs to and from each peer subnet whose path carries less than the
    pod MTU have their MSS lowered to what it carries (never raised: TCPMSS --set-mss leaves a
    smaller MSS as it is). Both directions: the clamp works with a peer that clamps nothing
    (an upstream node). Forwarded traffic only: this node's own connections follow the
    route's MTU."""
    c = f'-m comment --comment "{MSS_COMMENT}"'
    syn = "-p tcp -m tcp --tcp-flags SYN,RST SYN"
    return [Rule("mangle", "FORWARD", f"{c} -j {MSS_CHAIN}")] + [
        Rule("mangle", MSS_CHAIN, f"{side} {subnet} {syn} {c} -j TCPMSS --set-mss {mss}")
        for subnet, mss in sorted(clamps.items(), key=lambda kv: str(kv[0]))
        for side in ("-s", "-d")
    ]


def vxlan_chain(port: int) -> str:
    """The peer-filter chain of the VXLAN network on ``port`` (one network per port)."""
    return f"{VXLAN_CHAIN_PREFIX}{port}"


def vxlan_peer_rules(port: int, peers: list[str]) -> list[Rule]:
    """pyflannel only (--vxlan-peer-filter): VXLAN datagrams are accepted from the public IPs
    of known peers only. One rule per peer, checked in order: meant for small clusters."""
    c = f'-m comment --comment "{VXLAN_COMMENT}"'
    chain = vxlan_chain(port)
    return (
        [Rule("filter", "INPUT", f"-p udp -m udp --dport {port} {c} -j {chain}")]
        + [Rule("filter", chain, f"-s {ip}/32 {c} -j RETURN") for ip in peers]
        + [Rule("filter", chain, f"{c} -j DROP")]
    )


def site_chain(port: int) -> str:
    return f"{SITE_CHAIN_PREFIX}{port}"


def site_port_rules(port: int, members: list[str]) -> list[Rule]:
    """pyflannel only (--site): datagrams to the site link's port from an address no node of
    the network has are counted by the chain's last rule. It has no target: WireGuard drops
    what no member's key sealed, and a member that roamed to an address not known yet (a
    renumbered NAT) must still get through."""
    c = f'-m comment --comment "{SITE_COMMENT}"'
    chain = site_chain(port)
    return (
        [Rule("filter", "INPUT", f"-p udp -m udp --dport {port} {c} -j {chain}")]
        + [Rule("filter", chain, f"-s {ip}/32 {c} -j RETURN") for ip in members]
        + [Rule("filter", chain, f'-m comment --comment "{STRANGERS_COMMENT}"')]
    )


_COUNTERS = re.compile(r" -c (\d+) (\d+)")


def strangers_counted(listed_with_counters: str) -> int | None:
    """The packets the strangers' rule counted, from ``iptables -S <site chain> -v``
    (``-A ... -c <packets> <bytes>``); None if the rule is not there."""
    for line in listed_with_counters.splitlines():
        m = _COUNTERS.search(line)
        if m and f'"{STRANGERS_COMMENT}"' in line:
            return int(m.group(1))
    return None


# Ownership, per network. Several networks on one host (one daemon per --etcd-prefix) share
# upstream's chains FLANNEL-POSTRTG and FLANNEL-FWD, as upstream's daemons do; in those a line
# belongs to the network whose CIDR it names. Lines naming no network (the kube-proxy mark
# rule, the jumps from the built-in chains) are shared: kept once, never removed. A line in a
# flannel chain without a flannel comment is nobody's and is removed. The VXLAN peer-filter
# and site-port chains are per port, so one network's alone.
def claim(line: str, rules: list[Rule], cluster: Cluster) -> str:
    """Whose a listed ``-A <flannel chain> ...`` line is: OURS (to keep as wanted or remove),
    SHARED (one copy kept for every network) or OTHERS (another network's: never touched)."""
    chain = line.split()[1]
    if chain not in SHARED_CHAINS:
        return OURS
    if line in shared_texts([r.line for r in rules if r.chain == chain], cluster):
        return SHARED
    if names_network_inside(line, cluster):
        return OURS
    if not any(c in line for c in (MASQ_COMMENT, FORWARD_COMMENT, MSS_COMMENT)):
        return OURS  # a stray line in a flannel chain: nobody's, so ours to clean up
    return OTHERS


def our_chains(rules: list[Rule]) -> dict[str, str]:
    """chain -> table for the flannel chains the rules use (everything but built-in chains)."""
    return {r.chain: r.table for r in rules if r.chain.startswith("FLANNEL-")}


def _chain_lines(listed: list[str], chain: str) -> list[str]:
    return [line for line in listed if line.startswith(f"-A {chain} ")]


def restore_payload(table: str, rules: list[Rule], listed: list[str], cluster: Cluster) -> str:
    """One ``iptables-restore --noflush`` transaction for ``table``, given its ``iptables -S``
    listing. A chain that is missing, or that is this network's alone, is declared (created
    or flushed: rules of an old subnet vanish). In a shared chain that exists, only this
    network's lines are deleted and appended again (in order), and a missing shared line is
    inserted at the top; other networks' lines stay as they are. Each existing copy of a jump
    rule is deleted and one appended."""
    lines = [f"*{table}"]
    mine = [r for r in rules if r.table == table]
    existing = {line.split()[1] for line in listed if line.startswith("-N ")}
    chains = list(our_chains(mine))
    fresh = [c for c in chains if c not in existing or c not in SHARED_CHAINS]
    lines += [f":{chain} - [0:0]" for chain in fresh]
    for r in mine:
        if not r.chain.startswith("FLANNEL-"):
            lines += [f"-D {r.chain} {r.spec}"] * listed.count(r.line)
            lines.append(r.line)
    for chain in chains:
        wanted = [r for r in mine if r.chain == chain]
        if chain in fresh:
            lines += [r.line for r in wanted]
            continue
        have = _chain_lines(listed, chain)
        for line in have:
            if claim(line, rules, cluster) == OURS:
                lines.append("-D" + line[2:])
        shared = [r for r in wanted if claim(r.line, rules, cluster) == SHARED]
        for r in shared:
            count = have.count(r.line)
            lines += [f"-D {chain} {r.spec}"] * max(count - 1, 0)
            if count == 0:
                lines.append(f"-I {chain} 1 {r.spec}")
        lines += [r.line for r in wanted if r not in shared]
    return "\n".join(lines) + "\nCOMMIT\n"


def drift(rules: list[Rule], listed: dict[str, list[str]], cluster: Cluster) -> list[str]:
    """What differs between ``rules`` and ``iptables -t <table> -S`` output per table: missing
    lines, lines of ours (or nobody's) that should not be there, duplicated jumps and shared
    lines. Other networks' lines are not drift. Empty when all is as it should be."""
    problems = []
    for table in sorted({r.table for r in rules}):
        have = listed.get(table, [])
        want = [r for r in rules if r.table == table]
        for r in want:
            count = have.count(r.line)
            if count == 0:
                problems.append(f"missing in {table}: {r.line}")
            elif count > 1 and (
                not r.chain.startswith("FLANNEL-") or claim(r.line, rules, cluster) == SHARED
            ):
                problems.append(f"duplicated in {table}: {r.line}")
        expected = {r.line for r in want}
        for chain in our_chains(want):
            problems += [
                f"unexpected in {table}: {line}"
                for line in _chain_lines(have, chain)
                if line not in expected and claim(line, rules, cluster) == OURS
            ]
    return problems


def parse_version(text: str) -> tuple[int, ...]:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9)."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


JUMPS = {
    MASQ_CHAIN: ("nat", "POSTROUTING", MASQ_COMMENT),
    FORWARD_CHAIN: ("filter", "FORWARD", FORWARD_COMMENT),
    MSS_CHAIN: ("mangle", "FORWARD", MSS_COMMENT),
}


def cleanup_payload(table: str, listed: list[str], cluster: Cluster) -> str | None:
    """An ``iptables-restore --noflush`` transaction removing this network's rules from
    upstream's chains in ``table`` (nftables mode does not use them); a chain left with no
    other network's rules goes, with its jump. None if there is nothing of ours."""
    lines = [f"*{table}"]
    existing = {line.split()[1] for line in listed if line.startswith("-N ")}
    for chain, (chain_table, builtin, comment) in JUMPS.items():
        if chain_table != table or chain not in existing:
            continue
        have = _chain_lines(listed, chain)
        ours = [line for line in have if names_network_inside(line, cluster)]
        others = [line for line in have if line not in ours and comment in line]
        others = [line for line in others if names_network_inside_any(line, cluster)]
        if not others:  # nobody else uses the chain: it goes, with its jump
            jump = f'-A {builtin} -m comment --comment "{comment}" -j {chain}'
            lines += ["-D" + jump[2:]] * listed.count(jump)
            lines += [f"-F {chain}", f"-X {chain}"]
        else:
            lines += ["-D" + line[2:] for line in ours]
    return "\n".join(lines) + "\nCOMMIT\n" if len(lines) > 1 else None


def names_network_inside_any(line: str, family_of: Cluster) -> bool:
    """Does the line name a network of that family (another network's rule does; the shared
    ones do not)?"""
    everything = IPv6Network("::/0") if family_of.version == 6 else IPv4Network("0.0.0.0/0")
    return names_network_inside(line, everything)
