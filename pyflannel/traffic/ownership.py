"""Whose rule is it? Several networks on one host share upstream's chains (iptables) and
tables (nftables); in them a rule belongs to the network whose CIDR it names. Rules that name
no network (the kube-proxy mark rule, jumps) are shared: kept once, never removed. Pure."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

OURS, SHARED, OTHERS = "ours", "shared", "others"

Cluster = IPv4Network | IPv6Network


def names_network_inside(text: str, cluster: Cluster) -> bool:
    """Does the rule text name an address or network inside ``cluster`` (same family)?"""
    for token in text.split():
        try:
            net = ip_network(token, strict=False)
        except ValueError:
            continue
        if net.version == cluster.version and net.subnet_of(cluster):  # type: ignore[arg-type]
            return True
    return False


def shared_texts(texts: list[str], cluster: Cluster) -> set[str]:
    """Of a network's wanted rules, the ones every network on the host shares."""
    return {t for t in texts if not names_network_inside(t, cluster)}
