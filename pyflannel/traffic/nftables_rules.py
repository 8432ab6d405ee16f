"""Upstream flannel's nftables rules (``EnableNFTables``, pkg/trafficmngr/nftables), as data,
and the ``nft -f`` transactions that install, check and remove one network's share. Pure.

Upstream's table ``ip flannel-ipv4`` (chains ``forward``: filter hook forward priority filter,
``postrtg``: nat hook postrouting priority srcnat) is shared by every network on the host, as
upstream's daemons share it. Unlike upstream, a daemon never flushes a chain: it deletes its own
rules by handle (the ones naming its CIDR; ownership.py) and adds them again in one
transaction, so another network's rules in the same chain stay. Rules are written in the
canonical form ``nft list`` prints (``meta mark 0x00004000``), so the same strings serve for
applying and for checking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyflannel.traffic.ownership import (
    OTHERS,
    OURS,
    SHARED,
    Cluster,
    names_network_inside,
    shared_texts,
)

FAMILY = "ip"
TABLE = "flannel-ipv4"
FAMILY6, TABLE6 = "ip6", "flannel-ipv6"  # a dual-stack network's IPv6 rules (same chains)
FORWARD, POSTRTG, MSS = "forward", "postrtg", "mss"
CHAINS = {
    MSS: 'comment "pyflannel: TCP MSS clamped on paths of a smaller MTU" ; '
    "type filter hook forward priority mangle ;",
    FORWARD: 'comment "chain to accept flannel traffic" ; type filter hook forward priority filter ;',
    POSTRTG: 'comment "chain to manage traffic masquerading by flannel" ; '
    "type nat hook postrouting priority srcnat ;",
}
KUBE_PROXY_MARK = "meta mark 0x00004000 return"


def table_of(cluster: Cluster) -> tuple[str, str]:
    """(nft family, table) of a network's rules: ``ip flannel-ipv4``, ``ip6 flannel-ipv6``."""
    return (FAMILY6, TABLE6) if cluster.version == 6 else (FAMILY, TABLE)


@dataclass(frozen=True)
class NftRule:
    chain: str
    text: str


def masquerade_rules(cluster: Cluster, pod: Cluster, fully_random: bool) -> list[NftRule]:
    masq = "masquerade fully-random" if fully_random else "masquerade"
    ip, multicast = ("ip6", "ff00::/8") if cluster.version == 6 else ("ip", "224.0.0.0/4")
    return [
        NftRule(POSTRTG, KUBE_PROXY_MARK),  # kube-proxy masquerades those itself
        NftRule(POSTRTG, f"{ip} saddr {pod} {ip} daddr {cluster} return"),
        NftRule(POSTRTG, f"{ip} saddr {cluster} {ip} daddr {pod} return"),
        NftRule(POSTRTG, f"{ip} saddr != {pod} {ip} daddr {cluster} return"),
        NftRule(POSTRTG, f"{ip} saddr {cluster} {ip} daddr != {multicast} {masq}"),
        NftRule(POSTRTG, f"{ip} saddr != {cluster} {ip} daddr {cluster} {masq}"),
    ]


def forward_rules(cluster: Cluster) -> list[NftRule]:
    ip = "ip6" if cluster.version == 6 else "ip"
    return [
        NftRule(FORWARD, f"{ip} saddr {cluster} accept"),
        NftRule(FORWARD, f"{ip} daddr {cluster} accept"),
    ]


def mss_rules(clamps: dict[Cluster, int]) -> list[NftRule]:
    """pyflannel only: as iptables_rules.mss_rules, lowered only where larger."""
    return [
        NftRule(
            MSS,
            f"{'ip6' if subnet.version == 6 else 'ip'} {side} {subnet} tcp flags syn / syn,rst "
            f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}",
        )
        for subnet, mss in sorted(clamps.items(), key=lambda kv: str(kv[0]))
        for side in ("saddr", "daddr")
    ]


@dataclass
class Listing:
    """``nft -a list table ip flannel-ipv4`` (or ``ip6 flannel-ipv6``), parsed: which chains exist, and their rules with
    handles, in order. An absent table is an empty listing."""

    chains: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.chains)


_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_RULE = re.compile(r"^\s*(.+?) # handle (\d+)$")


def parse_listing(text: str) -> Listing:
    listing = Listing()
    chain: str | None = None
    for line in text.splitlines():
        m = _CHAIN.match(line)
        if m:
            chain = m.group(1)
            listing.chains[chain] = []
            continue
        if line.strip() == "}":
            chain = None
            continue
        m = _RULE.match(line)
        if chain is not None and m and not m.group(1).startswith(("type ", "comment ")):
            listing.chains[chain].append((m.group(1), int(m.group(2))))
    return listing


def claim(text: str, rules: list[NftRule], cluster: Cluster) -> str:
    if text in shared_texts([r.text for r in rules], cluster):
        return SHARED
    return OURS if names_network_inside(text, cluster) else OTHERS


def drift(rules: list[NftRule], listing: Listing, cluster: Cluster) -> list[str]:
    """Missing chains and rules, duplicated shared rules, rules of ours that should not be
    there. Another network's rules are not drift."""
    family, table = table_of(cluster)
    problems = []
    wanted = {r.text for r in rules}
    for chain in dict.fromkeys(r.chain for r in rules):
        if chain not in listing.chains:
            problems.append(f"missing chain {family} {table} {chain}")
            continue
        have = [text for text, _ in listing.chains[chain]]
        for r in (r for r in rules if r.chain == chain):
            count = have.count(r.text)
            if count == 0:
                problems.append(f"missing in {chain}: {r.text}")
            elif count > 1:
                problems.append(f"duplicated in {chain}: {r.text}")
        problems += [
            f"unexpected in {chain}: {text}"
            for text in have
            if text not in wanted and claim(text, rules, cluster) == OURS
        ]
    for chain in set(listing.chains) - {r.chain for r in rules}:  # e.g. --ip-masq turned off
        problems += [
            f"unexpected in {chain}: {text}"
            for text, _ in listing.chains[chain]
            if names_network_inside(text, cluster)
        ]
    return problems


def transaction(rules: list[NftRule], listing: Listing, cluster: Cluster) -> str:
    """An ``nft -f`` script: the table and chains created if missing (``add`` leaves existing
    ones as they are), this network's listed rules deleted by handle, a missing shared rule
    inserted first (and extra copies deleted), then this network's rules appended in order.
    One transaction: all of it applies, or none."""
    family, table = table_of(cluster)
    prefix = f"{family} {table}"
    lines = [f'add table {prefix} {{ comment "rules for {table}" ; }}']
    chains = list(dict.fromkeys(r.chain for r in rules))
    lines += [f"add chain {prefix} {c} {{ {CHAINS[c]} }}" for c in chains]
    for chain in chains:
        wanted = [r for r in rules if r.chain == chain]
        have = listing.chains.get(chain, [])
        shared = [r for r in wanted if claim(r.text, rules, cluster) == SHARED]
        for text, handle in have:
            if claim(text, rules, cluster) == OURS:
                lines.append(f"delete rule {prefix} {chain} handle {handle}")
        for r in shared:
            copies = [handle for text, handle in have if text == r.text]
            lines += [f"delete rule {prefix} {chain} handle {h}" for h in copies[1:]]
            if not copies:
                lines.append(f"insert rule {prefix} {chain} {r.text}")
        lines += [f"add rule {prefix} {chain} {r.text}" for r in wanted if r not in shared]
    for chain in sorted(set(listing.chains) - set(chains)):  # a set no longer wanted
        lines += [
            f"delete rule {prefix} {chain} handle {handle}"
            for text, handle in listing.chains[chain]
            if names_network_inside(text, cluster)
        ]
    return "\n".join(lines) + "\n"


def cleanup(listing: Listing, cluster: Cluster) -> str | None:
    """An ``nft -f`` script removing this network's rules (iptables mode, or switching back);
    the table goes too when no other network's rule is left in it. None: nothing of ours."""
    prefix = " ".join(table_of(cluster))
    ours = [
        (chain, handle)
        for chain, rules in listing.chains.items()
        for text, handle in rules
        if names_network_inside(text, cluster)
    ]
    others = [
        text
        for rules in listing.chains.values()
        for text, _ in rules
        if not names_network_inside(text, cluster) and text != KUBE_PROXY_MARK
    ]
    if not listing.exists or (not ours and others):
        return None
    if not others:
        return f"delete table {prefix}\n"
    return "".join(f"delete rule {prefix} {c} handle {h}\n" for c, h in ours)
