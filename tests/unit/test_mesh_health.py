"""Mesh health, pure: the per-peer verdicts from probe results, their words, the probe packets."""

from ipaddress import IPv4Address

from pyflannel.ops.mesh.health import PathRecord, PeerHealth, explain, judge
from pyflannel.ops.mesh.prober import checksum, echo_request, parse_reply


def test_states_from_results():
    ok, lost = 0.3, None
    assert judge([ok, ok], [ok, ok]) is PeerHealth.UNKNOWN  # not enough yet
    assert judge([ok] * 3, [ok] * 3) is PeerHealth.OK
    assert judge([ok, lost, lost, lost], [ok] * 4) is PeerHealth.UNREACHABLE
    assert judge([ok] * 5, [ok, lost, lost, lost]) is PeerHealth.BLACK_HOLE
    assert judge([ok] * 3, [ok] * 3, [lost] * 3) is PeerHealth.TCP_BROKEN
    assert judge([ok] * 3, [ok] * 3, [lost, lost, ok]) is PeerHealth.OK
    assert judge([ok, lost, ok, lost, ok, ok], [ok] * 6) is PeerHealth.OK  # too few to say
    assert judge([ok, lost, ok, lost, ok, ok] * 2, [ok] * 12) is PeerHealth.LOSSY


def test_a_record_reports_each_change_once_with_its_time():
    r = PathRecord()
    changes = [r.add(kind, 0.5, t) for t, kind in enumerate(["small", "full"] * 3)]
    assert [c for c in changes if c] == [PeerHealth.OK] and r.since == 5
    assert [r.add("full", None, 10 + i) for i in range(3)][-1] is PeerHealth.BLACK_HOLE
    assert r.add("full", None, 20) is None  # no news, no line
    assert r.rtt_median == 0.5


def test_the_words_name_the_peer_the_size_and_what_to_check():
    text = explain(PeerHealth.BLACK_HOLE, "10.1.8.0/24", "198.51.100.3", 1450)
    assert text == (
        "full-size packets (1450 bytes) to 10.1.8.0/24 at 198.51.100.3 are lost, small ones pass: "
        "an MTU black hole on the path; check the underlay MTU on both nodes"
    )
    assert "does not answer" in explain(PeerHealth.UNREACHABLE, "10.1.8.0/24", "x", 1450)
    assert explain(PeerHealth.OK, "10.1.8.0/24", "x", 1450) == ""


def test_echo_requests_are_the_asked_size_with_a_valid_checksum():
    packet = echo_request(0x1234, 7, b"nonce123", 1450)
    assert len(packet) == 1450 - 20 and checksum(packet) == 0
    assert packet[:2] == b"\x08\x00"


def test_replies_are_parsed_and_junk_is_not():
    icmp = bytes([0, 0, 0, 0, 0x12, 0x34, 0, 7]) + b"nonce123" + b"x" * 8
    ip = (
        bytes([0x45, 0, 0, 20 + len(icmp)]) + bytes(8) + bytes([10, 1, 8, 0]) + bytes([10, 1, 5, 0])
    )
    assert parse_reply(ip + icmp) == (IPv4Address("10.1.8.0"), 0x1234, 7, b"nonce123")
    assert parse_reply(b"\x45" + bytes(10)) is None
    request = ip[:20] + bytes([8]) + icmp[1:]  # an echo request, not a reply
    assert parse_reply(request) is None
