"""Overlay MTU: the underlay's MTU minus what each encapsulation adds (one table, not per backend)."""

from __future__ import annotations

# Bytes each encapsulation adds in front of an inner IPv4 packet.
OVERHEAD = {
    "vxlan": 50,  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
    "udp": 28,  # outer IPv4 20 + UDP 8; the payload is the bare inner packet
    "host-gw": 0,
    "wireguard": 80,  # outer IPv6 40 (upstream counts the larger) + UDP 8 + WireGuard 32
    "alloc": 0,
}

# An IPv6 underlay header is 20 bytes longer than an IPv4 one.
IPV6_UNDERLAY_EXTRA = 20

MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link must carry 68-byte packets
MIN_IPV6_MTU = 1280  # RFC 8200: every IPv6 link must carry 1280-byte packets


def overlay_mtu(backend_type: str, link_mtu: int, ipv6_underlay: bool = False) -> int:
    """The MTU pods must use so that encapsulated packets fit the underlay link (over an
    IPv6 underlay the outer header is 20 bytes longer: VXLAN costs 70)."""
    overhead = OVERHEAD[backend_type]
    if ipv6_underlay and overhead:
        overhead += IPV6_UNDERLAY_EXTRA
    mtu = link_mtu - overhead
    if mtu < MIN_IPV4_MTU:
        raise ValueError(
            f"underlay MTU {link_mtu} leaves {mtu} bytes for {backend_type} traffic; "
            f"IPv4 needs at least {MIN_IPV4_MTU}"
        )
    return mtu


def dual_stack_mtu(backend_type: str, link_mtu: int) -> int:
    """One pod MTU for both families: the smaller of the two encapsulations (upstream writes
    the IPv4 figure, so full-size IPv6 pod packets are first refused with Packet Too Big).
    It must still carry IPv6's minimum."""
    mtu = min(overlay_mtu(backend_type, link_mtu), overlay_mtu(backend_type, link_mtu, True))
    if mtu < MIN_IPV6_MTU:
        raise ValueError(
            f"underlay MTU {link_mtu} leaves {mtu} bytes for {backend_type} traffic; "
            f"IPv6 needs at least {MIN_IPV6_MTU}"
        )
    return mtu
