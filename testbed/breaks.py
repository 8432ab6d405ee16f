"""Breaking a path between bed nodes on purpose, as firewalls and hypervisors do: iptables
rules (in a node's own namespace) for tests and benchmarks to insert and delete."""

from __future__ import annotations

# VXLAN datagrams whose inner packet is TCP: after the outer IP header, UDP 8 + VXLAN 8 +
# Ethernet 14 bytes lead to the inner IPv4 header, whose protocol byte is its 10th (offset 39
# from the UDP header; u32 reads the 4 bytes at 36)
INNER_TCP = ("-m", "u32", "--u32", "0>>22&0x3C@36&0xFF=6")


def vxlan_out(dst_ip: object, *match: str) -> list[str]:
    """An OUTPUT rule dropping the VXLAN datagrams (UDP 8472) sent to ``dst_ip`` (with
    ``match``, e.g. INNER_TCP: only those carrying TCP)."""
    return ["OUTPUT", "-p", "udp", "--dport", "8472", "-d", str(dst_ip), *match, "-j", "DROP"]
