"""Overlay MTU: the underlay's MTU minus what each encapsulation adds (one table, not per backend)."""

from __future__ import annotations

# Bytes each encapsulation adds in front of an inner IPv4 packet.
OVERHEAD = {
    "vxlan": 50,  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
    "udp": 28,  # outer IPv4 20 + UDP 8; the payload is the bare inner packet
    "host-gw": 0,
    "alloc": 0,
}

MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link must carry 68-byte packets


def overlay_mtu(backend_type: str, link_mtu: int) -> int:
    """The MTU pods must use so that encapsulated packets fit the underlay link."""
    mtu = link_mtu - OVERHEAD[backend_type]
    if mtu < MIN_IPV4_MTU:
        raise ValueError(
            f"underlay MTU {link_mtu} leaves {mtu} bytes for {backend_type} traffic; "
            f"IPv4 needs at least {MIN_IPV4_MTU}"
        )
    return mtu
