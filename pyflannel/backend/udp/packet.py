"""The UDP backend's packet transforms, pure: validate, decrement TTL, build ICMP errors.

Wire format (upstream proxy_amd64.c): a datagram's payload is exactly one inner IPv4 packet.
Each proxy decrements the inner TTL and patches the header checksum incrementally (RFC 1624),
dropping the packet when the TTL runs out. These functions take and return ``bytes`` /
``bytearray`` and never raise on any input: a bad packet is a drop reason, not an exception.
"""

from __future__ import annotations

import struct

IPV4_MIN_HEADER = 20
PROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMP_TTL = 64

# Drop reasons (also the metric labels).
TOO_SHORT = "too_short"
NOT_IPV4 = "not_ipv4"
BAD_HEADER_LENGTH = "bad_header_length"
BAD_TOTAL_LENGTH = "bad_total_length"
BAD_CHECKSUM = "bad_checksum"
TOO_BIG = "too_big"
TTL_EXPIRED = "ttl_expired"
NO_ROUTE = "no_route"
UNKNOWN_SENDER = "unknown_sender"
NOT_FOR_US = "not_for_this_node"
SPOOFED_SOURCE = "spoofed_source"  # inner source outside the sending peer's subnets


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def problem(packet: bytes | bytearray | memoryview, mtu: int) -> str | None:
    """Why ``packet`` is not a well-formed IPv4 packet we may forward, or None."""
    n = len(packet)
    if n < IPV4_MIN_HEADER:
        return TOO_SHORT
    if packet[0] >> 4 != 4:
        return NOT_IPV4
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or ihl > n:
        return BAD_HEADER_LENGTH
    total = (packet[2] << 8) | packet[3]
    if total != n or total < ihl:
        return BAD_TOTAL_LENGTH
    if n > mtu:
        return TOO_BIG
    if ones_sum(packet[:ihl]) != 0xFFFF:  # a valid header sums to all ones (half checksum()'s time)
        return BAD_CHECKSUM
    return None


def decrement_ttl(packet: bytearray | memoryview) -> bool:
    """Decrement the TTL in place and patch the checksum; False if the packet must die.

    RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on the 16-bit word holding TTL and protocol.
    """
    ttl = packet[8]
    if ttl <= 1:
        return False
    old_word = (ttl << 8) | packet[9]
    new_word = old_word - 0x100
    hc = (packet[10] << 8) | packet[11]
    total = (~hc & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    hc = ~total & 0xFFFF
    packet[8] = ttl - 1
    packet[10], packet[11] = hc >> 8, hc & 0xFF
    return True


def destination(packet: bytes | bytearray | memoryview) -> int:
    return int.from_bytes(packet[16:20], "big")


def source(packet: bytes | bytearray | memoryview) -> int:
    return int.from_bytes(packet[12:16], "big")


def wants_icmp_error(packet: bytes | bytearray | memoryview) -> bool:
    """Upstream's rule, from RFC 1122: no ICMP error about ICMP, nor about a non-first
    fragment (nor about a packet with IP options, which upstream skips too)."""
    if packet[9] == PROTO_ICMP:
        return False
    if ((packet[6] & 0x1F) << 8 | packet[7]) != 0:  # fragment offset
        return False
    return (packet[0] & 0x0F) == 5


def net_unreachable(offender: bytes | bytearray | memoryview, src: int) -> bytes:
    """ICMP destination-unreachable/net-unreachable from ``src`` back to the offender's source:
    the offender's IP header plus its first 8 payload bytes, as RFC 792 asks."""
    ihl = (offender[0] & 0x0F) * 4
    quoted = bytes(offender[: ihl + 8])
    icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0) + quoted)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    header = bytearray(
        struct.pack(
            "!BBHHHBBHII",
            0x45,
            0,
            20 + len(icmp),
            0,
            0,
            ICMP_TTL,
            PROTO_ICMP,
            0,
            src,
            source(offender),
        )
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header + icmp)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of ``data`` as 16-bit big-endian words (an odd tail is
    zero-padded), folded to 16 bits: 0 only for all-zero data. One big-integer remainder
    (2**16 == 1 modulo 0xffff) is the fastest way in pure Python."""
    value = int.from_bytes(data, "big") << (8 if len(data) & 1 else 0)
    return value % 0xFFFF or (0xFFFF if value else 0)


def complete_checksum(packet: bytearray | memoryview, start: int, offset: int) -> bool:
    """Finish a partial transport checksum in place, as a virtio-net header's NEEDS_CSUM
    asks: the field at ``start + offset`` holds the pseudo-header sum, and the sum from
    ``start`` to the end goes in. False if the offsets do not fit the packet."""
    field = start + offset
    if field + 2 > len(packet):
        return False
    check = ~ones_sum(packet[start:]) & 0xFFFF
    packet[field : field + 2] = (check or 0xFFFF).to_bytes(2, "big")  # 0 means none in UDP
    return True
