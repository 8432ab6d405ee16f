"""The etcd key of a lease: ``10.5.34.0-24`` or ``10.12.13.0-24&fd00:12:13::-56`` (subnet.go)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

# Upstream's regex, unanchored at the start and searched in the full etcd key. The two
# unescaped dots are upstream's too; the address must still parse, so they change nothing.
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$", re.ASCII)


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None] | None:
    """The subnet(s) named by an etcd key, or None if it is not a subnet key.

    Like upstream, an IPv4 prefix must fit in 5 bits (0..31) and an IPv6 prefix in 7 bits.
    Unlike upstream, an address with host bits set (``10.1.2.3-24``) is rejected: flannel
    never writes one, and accepting it would route a subnet other than the one named.
    """
    m = _KEY_RE.search(key)
    if m is None:
        return None
    ip4, len4, ip6, len6 = m.groups()
    try:
        if int(len4) > 31:
            return None
        subnet = IPv4Network((IPv4Address(ip4), int(len4)))
        if ip6 is None:
            return subnet, None
        if int(len6) > 127:
            return None
        return subnet, IPv6Network((IPv6Address(ip6), int(len6)))
    except ValueError:
        return None
