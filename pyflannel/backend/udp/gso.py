"""Batching for the UDP fast path, pure: which packets can travel together.

Receiving (UDP_GRO hands us many datagrams at once): consecutive TCP segments of one flow are
coalesced into one GSO super-packet written to the TUN with a virtio-net header, so the kernel
takes dozens of segments in one write. Sending: outgoing packets to one peer are grouped into
UDP_SEGMENT sends (all but the last of a group the same size), so one system call carries
many datagrams. On the wire nothing changes: each datagram is still one inner IPv4 packet.

A coalesced packet's TCP checksum is completed by the kernel (VIRTIO_NET_HDR_F_NEEDS_CSUM):
the segments' own checksums are not re-verified in Python (that costs more than batching
saves); the outer UDP checksum, verified by the kernel, protects them on the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET_HDR.size  # 10
PLAIN = bytes(VNET_LEN)  # no offload: a complete, checksummed packet
NEEDS_CSUM = 1
GSO_TCPV4 = 1
TCP_ACK, TCP_PSH = 0x10, 0x08
MAX_SEGMENTS = 64  # per coalesced packet and per UDP_SEGMENT send
MAX_IP_LEN = 65535
MAX_UDP_PAYLOAD = 65507


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _header_checksum(header: bytes | bytearray) -> int:
    return ~_fold(sum(struct.unpack("!10H", header[:20]))) & 0xFFFF


def _tcp_info(p) -> tuple[int, int] | None:
    """(TCP header length, payload length) of a coalescable IPv4/TCP segment, else None:
    no IP options, not a fragment, only ACK (and PSH) set, no urgent data, some payload."""
    if len(p) < 40 or p[0] != 0x45 or p[9] != 6 or (p[6] & 0x3F) or p[7]:
        return None
    thl = (p[32] >> 4) * 4
    if thl < 20 or 20 + thl > len(p) or p[33] & ~(TCP_ACK | TCP_PSH) & 0xFF or not p[33] & TCP_ACK:
        return None
    if p[38] or p[39]:  # urgent pointer
        return None
    payload = ((p[2] << 8) | p[3]) - 20 - thl
    return (thl, payload) if payload > 0 else None


def _follows(prev, prev_info, cur, cur_info, gso_size: int) -> bool:
    thl, payload = cur_info
    if prev[33] & TCP_PSH or thl != prev_info[0] or prev_info[1] != gso_size or payload > gso_size:
        return False
    # Same flow and same everything but the sequence number and IP ID.
    if cur[12:20] != prev[12:20] or cur[20:24] != prev[20:24] or cur[28:32] != prev[28:32]:
        return False
    if (
        cur[1] != prev[1]
        or cur[8] != prev[8]
        or (cur[6] ^ prev[6]) & 0x40
        or cur[34:36] != prev[34:36]
    ):
        return False
    if cur[40 : 20 + thl] != prev[40 : 20 + thl]:  # TCP options
        return False
    seq = int.from_bytes(cur[24:28], "big")
    return seq == (int.from_bytes(prev[24:28], "big") + prev_info[1]) & 0xFFFFFFFF


def coalesce(packets: Sequence) -> list[list]:
    """Group packets (bytes-like, checksummed, in order) into TUN writes.

    Each write is a list of buffers to hand to ``os.writev``: a virtio-net header, then the
    packet, or for a run of segments the merged headers and each segment's payload.
    """
    writes: list[list] = []
    i, n = 0, len(packets)
    while i < n:
        first = packets[i]
        info = _tcp_info(first)
        j = i + 1
        if info is not None and not first[33] & TCP_PSH:
            thl, gso_size = info
            total, prev, prev_info = 20 + thl + gso_size, first, info
            while j < n and j - i < MAX_SEGMENTS:
                cur = packets[j]
                cur_info = _tcp_info(cur)
                if cur_info is None or not _follows(prev, prev_info, cur, cur_info, gso_size):
                    break
                if total + cur_info[1] > MAX_IP_LEN:
                    break
                total += cur_info[1]
                prev, prev_info = cur, cur_info
                j += 1
        if j - i == 1:
            writes.append([PLAIN, first])
        else:
            writes.append(_merged(packets[i:j], info, total))
        i = j
    return writes


def _merged(run: Sequence, info: tuple[int, int], total: int) -> list:
    thl, gso_size = info
    first, last = run[0], run[-1]
    header = bytearray(first[: 20 + thl])
    header[2:4] = total.to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = _header_checksum(header).to_bytes(2, "big")
    header[33] |= last[33] & TCP_PSH
    # The kernel completes the TCP checksum from csum_start; it wants the pseudo-header sum.
    pseudo = _fold(sum(struct.unpack("!4H", header[12:20])) + 6 + total - 20)
    header[36:38] = pseudo.to_bytes(2, "big")
    vnet = VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 20 + thl, gso_size, 20, 16)
    return [vnet, header, *(p[20 + thl :] for p in run)]


def segment_groups(packets: Sequence) -> list[list]:
    """Split packets for one destination into UDP_SEGMENT sends, in order: in each group all
    packets have the first one's size, except the last, which may be shorter."""
    groups: list[list] = []
    current: list = []
    size = total = 0
    for p in packets:
        length = len(p)
        if current and (
            length > size
            or len(current[-1]) != size
            or len(current) == MAX_SEGMENTS
            or total + length > MAX_UDP_PAYLOAD
        ):
            groups.append(current)
            current = []
        if not current:
            size, total = length, 0
        current.append(p)
        total += length
    if current:
        groups.append(current)
    return groups
