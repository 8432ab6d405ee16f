"""Cutting TCP super-packets from the TUN (TSO) into flannel datagrams, checked packet by packet
with scapy: every IP and TCP checksum recomputed, sequence numbers and IP IDs consecutive (and
wrapping), FIN/PSH only on the last segment and CWR only on the first, as the kernel's own
tcp_gso_segment does; and finishing partial checksums (NEEDS_CSUM)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from pyflannel.backend.udp import packet as pk
from pyflannel.backend.udp import tso

TIMESTAMP = [("NOP", None), ("NOP", None), ("Timestamp", (123, 456))]


def super_packet(payload_len, flags="A", seq=1000, ip_id=7, options=(), ip_options=()):
    payload = bytes((i * 7 + 3) % 256 for i in range(payload_len))
    packet = bytearray(
        bytes(
            IP(src="10.1.1.2", dst="10.1.2.3", id=ip_id, ttl=63, flags="DF", options=ip_options)
            / TCP(sport=40000, dport=80, seq=seq, ack=99, flags=flags, options=list(options))
            / payload
        )
    )
    ihl = (packet[0] & 0x0F) * 4
    packet[ihl + 16 : ihl + 18] = b"\x12\x34"  # what the kernel leaves there does not matter
    return packet, payload


def cut(packet, gso_size):
    datagrams, size = tso.segment(memoryview(packet), gso_size)
    data = bytes(datagrams)
    return [data[i : i + size] for i in range(0, len(data), size)]


def verify(segments, payload, gso_size, flags="A", seq=1000, ip_id=7):
    """Each segment against scapy's own checksums and the kernel's segmentation rules."""
    assert len(segments) == max(1, -(-len(payload) // gso_size))
    joined = b""
    for k, raw in enumerate(segments):
        ip = IP(raw)
        rebuilt = IP(raw)
        del rebuilt.chksum, rebuilt[TCP].chksum
        rebuilt = IP(bytes(rebuilt))
        assert (ip.chksum, ip[TCP].chksum) == (rebuilt.chksum, rebuilt[TCP].chksum), k
        assert ip.len == len(raw) and len(raw) <= (ip.ihl * 4 + ip[TCP].dataofs * 4 + gso_size)
        assert ip.id == (ip_id + k) & 0xFFFF
        assert ip[TCP].seq == (seq + k * gso_size) & 0xFFFFFFFF
        assert ip.ttl == 63 and ip[TCP].ack == 99 and ip.flags == "DF"
        expected = set(str(TCP(flags=flags).flags))
        if k < len(segments) - 1:
            expected -= {"F", "P"}
        if k > 0:
            expected -= {"C"}
        assert set(str(ip[TCP].flags)) == expected, k
        joined += bytes(ip[TCP].payload)
    assert joined == payload


@pytest.mark.parametrize("payload_len", [0, 1, 999, 1448, 1448 * 3, 1448 * 3 + 1, 10_000, 65_000])
def test_a_super_packet_is_cut_as_the_kernel_would(payload_len):
    packet, payload = super_packet(payload_len, options=TIMESTAMP)
    verify(cut(packet, 1448), payload, 1448)


@pytest.mark.parametrize("payload_len", [500, 5000])  # one segment (first and last), several
@pytest.mark.parametrize("flags", ["PA", "FA", "FPA", "CA", "CPA", "EA"])
def test_flags_fin_psh_on_the_last_cwr_on_the_first(flags, payload_len):
    packet, payload = super_packet(payload_len, flags=flags)
    verify(cut(packet, 1400), payload, 1400, flags=flags)


@pytest.mark.parametrize("gso_size", [1, 535, 536, 1001, 1460])
def test_odd_and_small_segment_sizes(gso_size):
    packet, payload = super_packet(min(4000, 40 * gso_size))
    verify(cut(packet, gso_size), payload, gso_size)


def test_sequence_numbers_and_ip_ids_wrap():
    packet, payload = super_packet(10_000, seq=0xFFFFF000, ip_id=0xFFFE)
    verify(cut(packet, 1448), payload, 1448, seq=0xFFFFF000, ip_id=0xFFFE)


def test_ip_options_are_kept_in_every_segment():
    packet, payload = super_packet(3000, ip_options=[b"\x01\x01\x01\x00"])
    segments = cut(packet, 1000)
    verify(segments, payload, 1000)
    assert all(IP(s).ihl == 6 for s in segments)


@settings(max_examples=60, deadline=None)
@given(
    payload_len=st.integers(0, 6000),
    gso_size=st.integers(1, 1500),
    flags=st.sampled_from(["A", "PA", "FA", "CPA"]),
    seq=st.integers(0, 2**32 - 1),
    ip_id=st.integers(0, 0xFFFF),
)
def test_any_cut_verifies(payload_len, gso_size, flags, seq, ip_id):
    packet, payload = super_packet(payload_len, flags, seq, ip_id)
    verify(cut(packet, gso_size), payload, gso_size, flags, seq, ip_id)


@pytest.mark.parametrize(
    "packet",
    [
        bytes(IP(src="10.1.1.2", dst="10.1.2.3") / UDP() / bytes(3000)),  # not TCP
        bytes(IP(src="10.1.1.2", dst="10.1.2.3", flags="MF") / TCP() / bytes(3000)),  # fragment
        bytes(IP(src="10.1.1.2", dst="10.1.2.3") / TCP() / bytes(3000))[:30],  # truncated
        b"\x60" + bytes(100),  # IPv6
    ],
)
def test_what_cannot_be_cut_is_refused(packet):
    assert tso.segment(memoryview(bytearray(packet)), 1000) is None
    assert tso.segment(memoryview(bytearray(super_packet(100)[0])), 0) is None


def pseudo_sum(ip) -> int:
    """What the kernel leaves in a partial checksum's field: the pseudo-header sum."""
    length = ip.len - ip.ihl * 4
    words = bytes(ip)[12:20] + bytes([0, ip.proto]) + length.to_bytes(2, "big")
    return pk.ones_sum(words)


@pytest.mark.parametrize(
    "layer, field_offset",
    [(TCP(sport=1, dport=2, flags="A"), 16), (UDP(sport=53, dport=53), 6)],
)
@pytest.mark.parametrize("payload", [b"", b"x", b"hello world", bytes(range(256)) * 5])
def test_partial_checksums_are_finished(layer, field_offset, payload):
    ip = IP(bytes(IP(src="10.1.1.2", dst="10.1.2.3") / layer / payload))
    raw = bytearray(bytes(ip))
    raw[20 + field_offset : 22 + field_offset] = pseudo_sum(ip).to_bytes(2, "big")
    assert pk.complete_checksum(raw, 20, field_offset)
    assert bytes(raw) == bytes(ip)  # scapy's own, complete checksum
    assert not pk.complete_checksum(raw, len(raw) - 1, 0)  # the field would run past the end


@given(st.binary(max_size=3000))
def test_ones_sum_agrees_with_the_reference_checksum(data):
    assert ~pk.ones_sum(data) & 0xFFFF == pk.checksum(data)


def test_cutting_into_a_reused_buffer_gives_the_same_datagrams():
    into = bytearray(2 * 65536)
    for payload_len in (10_000, 3_000, 60_000):  # each cut overwrites the last one's bytes
        packet, _ = super_packet(payload_len, flags="PA")
        fresh, size = tso.segment(memoryview(packet), 1448)
        reused, same_size = tso.segment(memoryview(packet), 1448, into)
        assert (bytes(reused), same_size) == (bytes(fresh), size)
        assert bytes(into[: len(reused)]) == bytes(reused)  # written where we asked
    small = bytearray(100)  # too small: a buffer of its own
    packet, _ = super_packet(10_000)
    assert bytes(tso.segment(memoryview(packet), 1448, small)[0]) == bytes(
        tso.segment(memoryview(packet), 1448)[0]
    )
    assert small == bytearray(100)
