"""Segmentation of the TCP super-packets the TUN hands over when it offers TSO, pure.

With ``TUNSETOFFLOAD`` (CSUM | TSO4) the kernel no longer cuts a pod's TCP stream into
MTU-sized packets before the TUN: one read returns up to 64 KB of one flow with a virtio-net
header saying "segment me at gso_size". Flannel's wire format wants one inner packet per
datagram, so we cut it here, exactly as the kernel would (tcp_gso_segment): consecutive
sequence numbers and IP IDs, FIN and PSH only on the last segment, CWR only on the first,
every IP and TCP checksum complete. All segments are computed at once with numpy (payload
checksums as per-row sums over a matrix of 16-bit words): about 1 µs a segment, where a
read per packet plus per-packet Python costs about 4.5 µs, and a Python checksum alone
3 µs (library notes).

Packets without GSO may still carry ``NEEDS_CSUM``: packet.complete_checksum finishes them.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
_LAST_ONLY = TCP_FIN | TCP_PSH


def _checksums(totals):
    """Internet checksums from sums of 16-bit words of any size: 2**16 == 1 (mod 0xffff), so
    the remainder is the ones'-complement sum (0 standing for 0xffff: the sums are nonzero)."""
    folded = totals % 0xFFFF
    return 0xFFFF - np.where(folded, folded, 0xFFFF)


@functools.cache
def _fields(ihl: int, size: int) -> np.dtype:
    """A datagram row seen as the header fields that differ from segment to segment."""
    return np.dtype(
        {
            "names": ["ip_len", "ip_id", "ip_check", "seq", "flags", "tcp_check"],
            "formats": [">u2", ">u2", ">u2", ">u4", "u1", ">u2"],
            "offsets": [2, 4, 10, ihl + 4, ihl + 13, ihl + 16],
            "itemsize": size,
        }
    )


def segment(packet, gso_size: int) -> tuple[memoryview, int] | None:
    """Cut an IPv4/TCP super-packet (IP header first, checksums as they come) into segments
    of ``gso_size`` payload bytes. Returns (datagrams back to back, datagram size): all
    datagrams but the last are exactly that size, so the buffer is ready for one
    ``UDP_SEGMENT`` send (or several, cut at multiples of the size). None if the packet is
    no IPv4/TCP packet that can be cut."""
    n = len(packet)
    if n < 40 or packet[0] >> 4 != 4 or packet[9] != 6 or gso_size <= 0:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or ihl + 20 > n:
        return None
    thl = (packet[ihl + 12] >> 4) * 4
    header_len = ihl + thl
    if thl < 20 or header_len > n or (packet[6] & 0x3F) or packet[7]:  # no fragments
        return None
    length = n - header_len
    count = -(-length // gso_size) if length else 1
    last = length - (count - 1) * gso_size
    size = header_len + gso_size

    # One row per datagram: headers from the packet, payload cut at gso_size, the last
    # row's unused tail zeroed (zeros do not change a ones'-complement sum).
    out = np.empty((count, size), np.uint8)
    template = np.frombuffer(packet, np.uint8, header_len)
    out[:, :header_len] = template
    body = np.frombuffer(packet, np.uint8, length, header_len)
    full = length // gso_size
    out[:full, header_len:] = body[: full * gso_size].reshape(full, gso_size)
    out[count - 1, header_len + last :] = 0
    if full < count:
        out[full, header_len : header_len + last] = body[full * gso_size :]
    if gso_size % 2 == 0:  # header_len is even: rows hold whole 16-bit words
        words_le = out.view("<u2")[:, header_len // 2 :]
    else:  # odd rows: sum a zero-padded copy
        rows = np.zeros((count, gso_size + 1), np.uint8)
        rows[:, :gso_size] = out[:, header_len:]
        words_le = rows.view("<u2")
    # Summed as native little-endian words (faster; 32 bits hold a row's sum). Swapping a
    # word's bytes is a rotation by 8 bits, which modulo 0xffff is a product with 256.
    payload_sums = words_le.sum(axis=1, dtype=np.uint32).astype(np.uint64) << 8

    words = list(struct.unpack_from(f"!{header_len // 2}H", packet))
    words[5] = words[ihl // 2 + 8] = 0  # both checksums
    k = np.arange(count, dtype=np.uint64)
    payloads = np.full(count, gso_size, np.uint64)
    payloads[-1] = last
    fields = out.reshape(-1).view(_fields(ihl, size))

    ip_len = payloads + header_len
    ip_id = (words[2] + k) & 0xFFFF
    fields["ip_len"] = ip_len
    fields["ip_id"] = ip_id
    ip_base = sum(words[: ihl // 2]) - words[1] - words[2]  # all but length and ID
    fields["ip_check"] = _checksums(ip_base + ip_len + ip_id)

    tcp = ihl // 2  # index of the first TCP word
    seq = ((words[tcp + 2] << 16 | words[tcp + 3]) + k * gso_size) & 0xFFFFFFFF
    flags = np.full(count, packet[ihl + 13], np.uint64)
    flags[:-1] &= ~_LAST_ONLY & 0xFF
    flags[1:] &= ~TCP_CWR & 0xFF
    fields["seq"] = seq
    fields["flags"] = flags
    tcp_base = (
        sum(words[tcp:])
        - words[tcp + 2]  # the sequence number and the flags: per segment below
        - words[tcp + 3]
        - (words[tcp + 6] & 0xFF)
        + sum(words[6:10])  # pseudo-header: addresses, protocol, TCP length (below)
        + 6
        + thl
    )
    # A 32-bit sequence number counts as its two words: 2**16 == 1 (mod 0xffff) again.
    fields["tcp_check"] = _checksums(tcp_base + payloads + seq + flags + payload_sums)
    return memoryview(out.reshape(-1)[: (count - 1) * size + header_len + last]), size
