"""UDP fast path batching, checked against packets built with scapy: coalescing only where the
kernel's own GRO would, merged headers right (checked by re-segmenting the super-packet as the
kernel would), and UDP_SEGMENT groups that the kernel accepts."""

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from pyflannel.backend.udp import gso
from pyflannel.backend.udp.packet import checksum

SRC, DST = "10.1.2.2", "10.1.1.2"


def seg(
    seq,
    payload=1400,
    flags="A",
    ack=77,
    opts=(),
    ip_id=None,
    src=SRC,
    sport=40000,
    window=500,
    **ip_kw,
):
    ip = IP(src=src, dst=DST, id=ip_id if ip_id is not None else seq % 65536, **ip_kw)
    return bytes(
        ip
        / TCP(
            sport=sport, dport=80, seq=seq, ack=ack, flags=flags, window=window, options=list(opts)
        )
        / bytes((seq + k) % 251 for k in range(payload))
    )


def flow(n, start=1000, payload=1400, last_payload=None, last_flags="A", first_id=7, **kw):
    """n segments as one TCP sender emits them: consecutive sequence numbers and IP IDs."""
    out = []
    seq = start
    for k in range(n):
        size = last_payload if (k == n - 1 and last_payload is not None) else payload
        out.append(
            seg(seq, size, flags=last_flags if k == n - 1 else "A", ip_id=first_id + k, **kw)
        )
        seq += size
    return out


def resegment(write):
    """What the kernel does with a GSO write: cut it back into segments, filling in lengths,
    IDs and checksums. Returns the segments as bytes."""
    vnet, *parts = write
    _, gso_type, hdr_len, gso_size, _, _ = gso.VNET_HDR.unpack(vnet)
    if gso_type == 0:
        return [b"".join(bytes(p) for p in parts)]
    header, payloads = bytes(parts[0]), [bytes(p) for p in parts[1:]]
    data = b"".join(payloads)
    out, seq = [], int.from_bytes(header[24:28], "big")
    ip_id = int.from_bytes(header[4:6], "big")
    for k in range(0, len(data), gso_size):
        chunk = data[k : k + gso_size]
        h = bytearray(header)
        h[2:4] = (hdr_len + len(chunk)).to_bytes(2, "big")
        h[4:6] = ((ip_id + k // gso_size) & 0xFFFF).to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(h[:20]).to_bytes(2, "big")
        h[24:28] = ((seq + k) & 0xFFFFFFFF).to_bytes(4, "big")
        if k + gso_size < len(data):
            h[33] &= ~gso.TCP_PSH & 0xFF
        h[36:38] = b"\0\0"
        pseudo = bytes(h[12:20]) + struct.pack("!HH", 6, len(h) - 20 + len(chunk))
        h[36:38] = checksum(pseudo + bytes(h[20:]) + chunk).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def segments(write) -> int:
    """How many packets a TUN write carries."""
    return 1 if write[0] == gso.PLAIN else len(write) - 2


def test_a_flow_becomes_one_gso_write_that_resegments_to_the_original_packets():
    packets = flow(10)
    (write,) = gso.coalesce(packets)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = gso.VNET_HDR.unpack(write[0])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 1, 40, 1400, 20, 16)
    merged = bytes(write[1])
    assert int.from_bytes(merged[2:4], "big") == 40 + 14000
    assert checksum(merged[:20]) == 0  # IP header checksum recomputed
    assert resegment(write) == packets  # seq numbers, IDs, flags, checksums: as sent


def test_pseudo_header_sum_is_what_the_kernel_completes():
    (write,) = gso.coalesce(flow(3))
    merged = bytes(write[1])
    total_tcp = int.from_bytes(merged[2:4], "big") - 20
    expected = sum(struct.unpack("!4H", merged[12:20])) + 6 + total_tcp
    while expected >> 16:
        expected = (expected & 0xFFFF) + (expected >> 16)
    assert int.from_bytes(merged[36:38], "big") == expected


def test_a_shorter_last_segment_and_psh_on_it_end_the_run():
    packets = flow(5, last_payload=333, last_flags="PA")
    (write,) = gso.coalesce(packets)
    assert write[1][33] & gso.TCP_PSH
    assert resegment(write) == packets


def test_psh_in_the_middle_ends_a_run_there():
    packets = flow(3, last_flags="PA") + flow(3, start=1000 + 4200, first_id=10)
    writes = gso.coalesce(packets)
    assert [segments(w) for w in writes] == [3, 3]
    assert [p for w in writes for p in resegment(w)] == packets


def test_gaps_other_flows_and_differences_split_runs():
    a = flow(2)
    gap = [seg(1000 + 2800 + 100)]  # sequence gap
    other = [seg(1000 + 2900, sport=40001)]  # other flow
    assert len(gso.coalesce(a + gap)) == 2
    assert len(gso.coalesce(a + other)) == 2
    assert len(gso.coalesce([seg(1000), seg(2400, ack=78)])) == 2  # ack moved
    assert len(gso.coalesce([seg(1000), seg(2400, window=501)])) == 2
    assert len(gso.coalesce([seg(1000, ttl=9), seg(2400, ttl=8)])) == 2
    assert len(gso.coalesce([seg(1000, tos=4), seg(2400)])) == 2


def test_tcp_options_must_match_and_are_kept():
    ts = [("Timestamp", (1, 2))]
    same = [seg(1000 + 1400 * k, opts=ts, ip_id=9 + k) for k in range(3)]
    (write,) = gso.coalesce(same)
    assert resegment(write) == same
    differ = [seg(1000, opts=ts), seg(2400, opts=[("Timestamp", (1, 3))])]
    assert len(gso.coalesce(differ)) == 2


def test_a_longer_segment_after_the_first_size_is_not_merged():
    assert len(gso.coalesce([seg(1000, 1000), seg(2000, 1400)])) == 2


@pytest.mark.parametrize(
    "packet",
    [
        bytes(IP(src=SRC, dst=DST) / UDP() / (b"x" * 100)),
        bytes(IP(src=SRC, dst=DST) / ICMP() / (b"x" * 100)),
        bytes(IP(src=SRC, dst=DST, flags="MF") / TCP(flags="A") / (b"x" * 100)),  # first fragment
        bytes(IP(src=SRC, dst=DST, frag=100) / (b"x" * 100)),  # later fragment
        bytes(IP(src=SRC, dst=DST, options=[b"\x01\x01\x01\x00"]) / TCP(flags="A") / (b"x" * 100)),
        seg(1000, flags="S"),
        seg(1000, flags="FA"),
        seg(1000, flags="RA"),
        seg(1000, payload=0),  # a pure ACK
    ],
)
def test_non_tcp_fragments_options_and_special_segments_pass_through_untouched(packet):
    writes = gso.coalesce([packet, packet])
    assert writes == [[gso.PLAIN, packet], [gso.PLAIN, packet]]


def test_mixed_flows_in_one_batch_keep_their_order():
    a, b = flow(3), flow(3, start=50_000, sport=40001, first_id=500)
    mixed = [a[0], a[1], b[0], b[1], b[2], a[2]]
    writes = gso.coalesce(mixed)
    assert [p for w in writes for p in resegment(w)] == mixed
    assert [segments(w) for w in writes] == [2, 3, 1]


def test_runs_are_capped_at_64_segments_and_64k():
    writes = gso.coalesce(flow(100, payload=500))
    assert max(segments(w) for w in writes) <= 64
    big = gso.coalesce(flow(60, payload=1460))
    assert all(int.from_bytes(bytes(w[1])[2:4], "big") <= 65535 for w in big if segments(w) > 1)
    assert [p for w in big for p in resegment(w)] == flow(60, payload=1460)


class Admit:
    """An ``admit`` that records what it was asked, decrements the TTL in place like the
    forwarder's checks do, and refuses the packets listed."""

    def __init__(self, refuse=()):
        self.asked, self.refuse = [], set(refuse)

    def __call__(self, packet) -> bool:
        self.asked.append(bytes(packet))
        if bytes(packet) in self.refuse:
            return False
        packet[:20] = ttl_down(packet)[:20]
        return True


def ttl_down(packet) -> bytes:
    """``packet`` with its TTL one less and its header checksum redone."""
    p = bytearray(packet)
    p[8] -= 1
    p[10:12] = b"\0\0"
    p[10:12] = checksum(p[:20]).to_bytes(2, "big")
    return bytes(p)


def writable(packets):
    return [memoryview(bytearray(p)) for p in packets]


def test_only_the_first_segment_of_a_run_is_checked_and_its_edits_are_kept():
    packets = flow(6, ttl=30)
    admit = Admit()
    (write,) = gso.coalesce(writable(packets), admit)
    assert admit.asked == [packets[0]]  # the other five repeat its headers
    assert resegment(write) == [ttl_down(p) for p in packets]  # TTL 30 -> 29 in every one


def test_a_refused_first_segment_is_left_out_and_the_next_one_is_checked():
    packets = flow(4)
    admit = Admit(refuse=[packets[0]])
    writes = gso.coalesce(writable(packets), admit)
    assert admit.asked == [packets[0], packets[1]]
    assert [p for w in writes for p in resegment(w)] == [ttl_down(p) for p in packets[1:]]


def test_lone_packets_are_each_checked_and_refusals_dropped():
    ping = bytes(IP(src=SRC, dst=DST) / ICMP() / (b"x" * 100))
    ack = seg(1000, payload=0)
    admit = Admit(refuse=[ping])
    writes = gso.coalesce(writable([ping, ack]), admit)
    assert admit.asked == [ping, ack]
    assert [segments(w) for w in writes] == [1]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.__setitem__(slice(2, 4), (len(p) + 4).to_bytes(2, "big")),  # length lies
        lambda p: p.__setitem__(8, p[8] + 1),  # TTL
        lambda p: p.__setitem__(15, p[15] ^ 1),  # source address
        lambda p: p.__setitem__(33, p[33] | 0x01),  # FIN
        lambda p: p.__setitem__(39, 1),  # urgent pointer
    ],
)
def test_a_segment_differing_from_the_first_starts_over_and_is_checked(corrupt):
    packets = flow(3)
    odd = bytearray(packets[1])
    corrupt(odd)
    admit = Admit()
    writes = gso.coalesce(writable([packets[0], bytes(odd), packets[2]]), admit)
    assert bytes(odd) in admit.asked  # never merged unchecked
    assert segments(writes[0]) == 1


def test_segment_groups_equal_sizes_with_a_shorter_last():
    packets = [b"a" * 1400] * 5 + [b"b" * 300] + [b"c" * 1400] * 2
    groups = gso.segment_groups(packets)
    assert [len(g) for g in groups] == [6, 2]
    for g in groups:
        assert all(len(p) == len(g[0]) for p in g[:-1]) and len(g[-1]) <= len(g[0])


def test_segment_groups_respect_the_kernel_limits():
    groups = gso.segment_groups([b"x" * 100] * 200)
    assert [len(g) for g in groups] == [64, 64, 64, 8]
    groups = gso.segment_groups([b"x" * 1472] * 60)
    assert all(sum(map(len, g)) <= 65507 for g in groups)
    assert gso.segment_groups([b"x" * 10, b"y" * 20]) == [
        [b"x" * 10],
        [b"y" * 20],
    ]  # larger: new group
