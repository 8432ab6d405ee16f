"""Batching for the UDP fast path, pure: which packets can travel together.

Receiving (UDP_GRO hands us many datagrams at once): consecutive TCP segments of one flow are
coalesced into one GSO super-packet written to the TUN with a virtio-net header, so the kernel
takes dozens of segments in one write. Sending: outgoing packets to one peer are grouped into
UDP_SEGMENT sends (all but the last of a group the same size), so one system call carries
many datagrams. On the wire nothing changes: each datagram is still one inner IPv4 packet.

A coalesced packet's TCP checksum is completed by the kernel (VIRTIO_NET_HDR_F_NEEDS_CSUM):
the segments' own checksums are not re-verified in Python (that costs more than batching
saves); the outer UDP checksum, verified by the kernel, protects them on the wire. Likewise
only a run's first segment goes through the full checks (``admit``); the others must repeat
its headers bit for bit except length, IP ID, checksums, sequence number and PSH, so they
would pass or fail the same checks, and the merged header is rebuilt from the first.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET_HDR.size  # 10
PLAIN = bytes(VNET_LEN)  # no offload: a complete, checksummed packet
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4 = 0, 1
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


@functools.cache
def _run_mask(header_len: int) -> int:
    """Over a run's IPv4 + TCP headers read as one integer: the bits every segment must share
    with the first. Free to differ: total length, IP ID, both checksums, sequence number, PSH."""
    mask = bytearray(b"\xff" * header_len)
    for start, end in ((2, 4), (4, 6), (10, 12), (24, 28), (36, 38)):
        mask[start:end] = bytes(end - start)
    mask[33] = 0xFF & ~TCP_PSH
    return int.from_bytes(mask, "big")


def _admit_all(packet) -> bool:
    return True


def coalesce(packets: Sequence, admit: Callable[[Any], bool] = _admit_all) -> list[list]:
    """Group packets (bytes-like, in order) into TUN writes.

    Each write is a list of buffers to hand to ``os.writev``: a virtio-net header, then the
    packet, or for a run of segments the merged headers and each segment's payload.
    ``admit(packet)`` is asked about every packet that is written alone or starts a run (it
    may edit the packet in place: the TTL); packets it refuses are left out.
    """
    writes: list[list] = []
    i, n = 0, len(packets)
    while i < n:
        first = packets[i]
        info = _tcp_info(first)
        if info is None or first[33] & TCP_PSH:
            if admit(first):
                writes.append([PLAIN, first])
            i += 1
            continue
        thl, gso_size = info
        header_len = 20 + thl
        key = int.from_bytes(first[:header_len], "big")  # as received, before admit() edits
        if not admit(first):
            i += 1
            continue
        mask, length_shift, seq_shift = _run_mask(header_len), (header_len - 4) * 8, thl * 8 - 64
        seq = (key >> seq_shift) & 0xFFFFFFFF
        total, payload, j = header_len + gso_size, gso_size, i + 1
        while j < n and j - i < MAX_SEGMENTS and payload == gso_size:
            cur = packets[j]
            length = len(cur)
            payload = length - header_len
            if not 0 < payload <= gso_size or total + payload > MAX_IP_LEN:
                break
            h = int.from_bytes(cur[:header_len], "big")
            if (
                (h ^ key) & mask
                or (h >> length_shift) & 0xFFFF != length
                or (h >> seq_shift) & 0xFFFFFFFF != (seq + (j - i) * gso_size) & 0xFFFFFFFF
            ):
                break
            total += payload
            j += 1
            if cur[33] & TCP_PSH:
                break
        writes.append([PLAIN, first] if j - i == 1 else _merged(packets[i:j], info, total))
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
