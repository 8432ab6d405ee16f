"""UDP backend packet transforms: TTL and checksum, validation, ICMP unreachable — checked
against scapy's independent encoding, and fuzzed: no byte string may crash them."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from pyflannel.backend.udp import packet as pk


def ip_packet(**kw) -> bytes:
    return bytes(IP(src="10.1.1.2", dst="10.1.2.2", **kw) / UDP(sport=1234, dport=80) / b"payload")


def test_checksum_of_a_valid_header_is_zero():
    raw = ip_packet()
    assert pk.checksum(raw[:20]) == 0


@pytest.mark.parametrize("ttl", [2, 64, 128, 255])
@pytest.mark.parametrize("tos", [0, 0x10, 0xFF])
def test_ttl_decrement_patches_the_checksum_like_a_full_recomputation(ttl, tos):
    raw = bytearray(ip_packet(ttl=ttl, tos=tos, id=0xFFFF, flags="DF"))
    assert pk.decrement_ttl(raw)
    expected = (
        IP(src="10.1.1.2", dst="10.1.2.2", ttl=ttl - 1, tos=tos, id=0xFFFF, flags="DF")
        / UDP(sport=1234, dport=80)
        / b"payload"
    )
    assert bytes(raw) == bytes(expected)
    assert pk.checksum(raw[:20]) == 0


@given(st.binary(min_size=20, max_size=20).filter(lambda b: b[8] > 1))
def test_incremental_checksum_matches_full_recomputation_for_any_header(header):
    raw = bytearray(header)
    raw[10:12] = b"\0\0"
    raw[10:12] = struct.pack("!H", pk.checksum(raw))
    assert pk.decrement_ttl(raw)
    assert pk.checksum(raw) == 0


@pytest.mark.parametrize("ttl", [0, 1])
def test_a_packet_whose_ttl_runs_out_is_dropped(ttl):
    raw = bytearray(ip_packet(ttl=ttl))
    assert not pk.decrement_ttl(raw)
    assert raw[8] == ttl  # untouched


def test_a_good_packet_has_no_problem():
    assert pk.problem(ip_packet(), 1472) is None


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", pk.TOO_SHORT),
        (ip_packet()[:19], pk.TOO_SHORT),
        (b"\x60" + bytes(39), pk.NOT_IPV4),
        (b"\x44" + ip_packet()[1:], pk.BAD_HEADER_LENGTH),  # IHL 4
        (b"\x4f" + ip_packet()[1:], pk.BAD_HEADER_LENGTH),  # IHL 15 > packet
        (ip_packet() + b"extra", pk.BAD_TOTAL_LENGTH),  # total length lies (too short)
        (ip_packet()[:-3], pk.BAD_TOTAL_LENGTH),  # truncated
        (ip_packet()[:10] + b"\x00\x00" + ip_packet()[12:], pk.BAD_CHECKSUM),
    ],
)
def test_malformed_packets_are_classified(raw, reason):
    assert pk.problem(raw, 1472) == reason


def test_a_packet_larger_than_the_mtu_is_too_big():
    raw = bytes(IP(src="10.1.1.2", dst="10.1.2.2") / UDP() / bytes(1500))
    assert pk.problem(raw, 1472) == pk.TOO_BIG


@given(st.binary(max_size=200), st.integers(min_value=68, max_value=9000))
@settings(max_examples=500)
def test_no_byte_string_crashes_validation(raw, mtu):
    reason = pk.problem(raw, mtu)
    assert reason is None or isinstance(reason, str)
    if reason is None:
        buf = bytearray(raw)
        pk.decrement_ttl(buf)
        pk.wants_icmp_error(buf)
        pk.net_unreachable(buf, 0x0A010100)


def test_net_unreachable_layout():
    offender = ip_packet(ttl=64)
    reply = IP(pk.net_unreachable(offender, 0x0A010100))  # from 10.1.1.0
    assert (reply.src, reply.dst, reply.proto, reply.ttl) == ("10.1.1.0", "10.1.1.2", 1, 64)
    assert reply.chksum == IP(bytes(reply)).chksum
    assert pk.checksum(bytes(reply)[:20]) == 0
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code) == (3, 0)
    assert pk.checksum(bytes(icmp)) == 0
    # RFC 792: the offending IP header and the first 8 bytes of its payload.
    assert bytes(icmp.payload) == offender[:28]
    assert reply.len == 20 + 8 + 28


@pytest.mark.parametrize(
    "pkt, wanted",
    [
        (bytes(IP(dst="10.1.9.9") / TCP()), True),
        (bytes(IP(dst="10.1.9.9") / UDP()), True),
        (bytes(IP(dst="10.1.9.9") / ICMP()), False),  # never about ICMP (as upstream)
        (bytes(IP(dst="10.1.9.9", frag=10) / UDP()), False),  # non-first fragment
        (bytes(IP(dst="10.1.9.9", flags="MF") / UDP()), True),  # first fragment
        (bytes(IP(dst="10.1.9.9", options=[b"\x01\x01\x01\x00"]) / UDP()), False),  # options
    ],
)
def test_which_packets_get_an_icmp_error(pkt, wanted):
    assert pk.wants_icmp_error(pkt) is wanted
