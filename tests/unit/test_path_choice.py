"""The path healer's rule (ops/mesh/path_choice.py) and its probes' packets
(ops/mesh/path_probe.py), as pure logic."""

import itertools
import struct
from ipaddress import IPv4Address

from pyflannel.ops.mesh.path_choice import (
    BACK_AFTER,
    DAMP_WINDOW,
    FAIL_ROUNDS,
    MAX_BACK_AFTER,
    MAX_TRY_WAIT,
    Encap,
    Move,
    PathChoice,
    PathResult,
)
from pyflannel.ops.mesh.path_probe import (
    SYN,
    TCP_PORT,
    answer_filter,
    parse_tcp_answer,
    pktinfo,
    tcp_syn,
)
from pyflannel.ops.mesh.prober import checksum
from pyflannel.ops.snapshot import ProbeView

OK = PathResult(icmp=True, tcp=True)
BLOCKED = PathResult(icmp=False, tcp=False)
NO_TCP = PathResult(icmp=True, tcp=False)


def fail(choice: PathChoice, vxlan: PathResult, udp: PathResult, now: float):
    """VXLAN failing FAIL_ROUNDS rounds in a row (UDP probed on the last); the move made."""
    for _ in range(FAIL_ROUNDS - 1):
        assert not choice.wants_udp_probe(vxlan)
        assert choice.observe(vxlan, None, now) is None
    assert choice.wants_udp_probe(vxlan)
    return choice.observe(vxlan, udp, now)


def test_a_working_vxlan_path_stays_and_udp_is_not_probed():
    choice = PathChoice()
    assert not choice.wants_udp_probe(OK)
    assert choice.observe(OK, None, 1.0) is None and choice.via is Encap.VXLAN


def test_one_lost_round_moves_nothing():
    choice = PathChoice()
    assert choice.observe(BLOCKED, None, 1.0) is None
    assert choice.observe(OK, None, 2.0) is None
    assert not choice.wants_udp_probe(BLOCKED)  # the count started over


def test_vxlan_failing_two_rounds_while_udp_answers_moves_and_says_why():
    for vxlan, why in ((BLOCKED, "vxlan blocked"), (NO_TCP, "vxlan passes ICMP but not TCP")):
        choice = PathChoice()
        assert fail(choice, vxlan, OK, 10.0) is Move.TO_UDP
        assert (choice.via, choice.why, choice.since, choice.trying) == (
            Encap.UDP,
            why,
            10.0,
            False,
        )


def test_back_after_two_clean_rounds_in_a_row_and_a_bad_round_starts_over():
    choice = PathChoice()
    fail(choice, BLOCKED, OK, 0.0)
    assert choice.wants_udp_probe(OK)  # on UDP: both paths are probed
    assert choice.observe(OK, OK, 1.0) is None
    assert choice.observe(BLOCKED, OK, 2.0) is None  # flaps: count again
    assert choice.observe(OK, OK, 3.0) is None
    assert choice.observe(OK, OK, 4.0) is Move.TO_VXLAN
    assert choice.via is Encap.VXLAN and choice.returned_at == 4.0


def test_a_path_that_breaks_again_soon_after_returning_waits_longer_each_time():
    choice = PathChoice()
    now, wanted = 0.0, []
    for _ in range(6):
        fail(choice, BLOCKED, OK, now)
        wanted.append(choice.back_after)
        for _ in range(choice.back_after):
            now += 10
            choice.observe(OK, OK, now)
        assert choice.via is Encap.VXLAN
    assert wanted == [BACK_AFTER, 4, 8, MAX_BACK_AFTER, MAX_BACK_AFTER, MAX_BACK_AFTER]
    fail(choice, BLOCKED, OK, now + DAMP_WINDOW + 1)  # long after: forgiven
    assert choice.back_after == BACK_AFTER


def test_udp_failing_while_vxlan_works_moves_back_at_once():
    choice = PathChoice()
    fail(choice, BLOCKED, OK, 0.0)
    assert choice.observe(OK, BLOCKED, 1.0) is Move.TO_VXLAN


def test_nothing_answering_on_udp_either_stays_on_udp():
    choice = PathChoice()
    fail(choice, BLOCKED, OK, 0.0)
    assert choice.observe(BLOCKED, BLOCKED, 1.0) is None and choice.via is Encap.UDP


def test_vxlan_broken_both_ways_is_tried_on_udp_and_confirmed_by_an_answer():
    """Both nodes see neither path answer (each one's answers come back over the other's
    broken VXLAN): each tries UDP; once both have, UDP answers."""
    choice = PathChoice()
    assert fail(choice, BLOCKED, BLOCKED, 0.0) is Move.TRY_UDP
    assert choice.via is Encap.UDP and choice.trying
    assert choice.observe(BLOCKED, OK, 1.0) is Move.CONFIRMED
    assert not choice.trying and choice.via is Encap.UDP


def test_a_peer_that_is_down_is_tried_ever_more_rarely():
    choice = PathChoice()
    tries, now = [], 0.0
    for _ in range(300):
        now += 1
        move = choice.observe(BLOCKED, BLOCKED, now)
        if move is Move.TRY_UDP:
            tries.append(int(now))
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    # a round on UDP, FAIL_ROUNDS on VXLAN, then 1, 2, 4 ... rounds waited
    assert gaps[:6] == [4, 5, 7, 11, 19, 35]
    assert max(gaps) == MAX_TRY_WAIT + 3
    choice.observe(OK, None, now)  # VXLAN works again: the waits start over
    assert choice.try_wait == 1


def test_a_failed_try_is_not_a_flap():
    choice = PathChoice()
    fail(choice, BLOCKED, BLOCKED, 0.0)
    choice.observe(BLOCKED, BLOCKED, 1.0)  # the try failed: back on VXLAN
    assert choice.returned_at is None
    choice.wait_left = 0
    assert fail(choice, BLOCKED, OK, 2.0) is Move.TO_UDP
    assert choice.back_after == BACK_AFTER


def test_the_view_shows_the_encapsulation_and_why():
    choice = PathChoice()
    assert choice.view().via == "vxlan" and choice.view().why == ""
    fail(choice, NO_TCP, OK, 5.0)
    view = choice.view()
    assert view.via == "udp" and view.since == 5.0 and view.back_after == 2
    assert view.why == "vxlan passes ICMP but not TCP" and view.moves == 1


# -- the probes' packets ------------------------------------------------------------------


def test_a_syn_has_a_valid_checksum_over_the_pseudo_header():
    src, dst = IPv4Address("10.1.4.0"), IPv4Address("10.1.10.0")
    segment = tcp_syn(src, dst, 40000, 0x01020304)
    sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", segment)
    assert (sport, dport, seq, ack, offset >> 4, flags) == (40000, TCP_PORT, 0x01020304, 0, 5, SYN)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(segment))
    assert checksum(pseudo + segment) == 0


def _ip(src: str, payload: bytes, proto: int = 6) -> bytes:
    return (
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0)
        + IPv4Address(src).packed
        + IPv4Address("10.1.4.0").packed
        + payload
    )


def test_answers_are_rsts_and_syn_acks_from_the_discard_port_only():
    rst = struct.pack("!HHIIBBHHH", TCP_PORT, 40000, 0, 77, 0x50, 0x14, 0, 0, 0)
    assert parse_tcp_answer(_ip("10.1.10.0", rst)) == (IPv4Address("10.1.10.0"), 40000, 77)
    syn_ack = struct.pack("!HHIIBBHHH", TCP_PORT, 40000, 5, 78, 0x50, 0x12, 0, 0, 0)
    assert parse_tcp_answer(_ip("10.1.10.0", syn_ack))[2] == 78
    other_port = struct.pack("!HHIIBBHHH", 22, 40000, 0, 77, 0x50, 0x14, 0, 0, 0)
    bare_rst = struct.pack("!HHIIBBHHH", TCP_PORT, 40000, 0, 77, 0x50, 0x04, 0, 0, 0)
    for junk in (b"", b"\x60" + bytes(40), _ip("10.1.10.0", b"short"), _ip("1.2.3.4", other_port)):
        assert parse_tcp_answer(junk) is None
    assert parse_tcp_answer(_ip("10.1.10.0", bare_rst)) is None  # acknowledges nothing


def _run_filter(program, packet: bytes) -> int:
    """A tiny interpreter of the instructions answer_filter uses."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0xB1:
            x = 4 * (packet[k] & 0x0F)
        elif code == 0x48:
            a = int.from_bytes(packet[x + k : x + k + 2], "big")
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x06:
            return k
        pc += 1


def test_the_socket_filter_passes_only_answers_to_the_probes_port():
    program = answer_filter(40000)
    answer = _ip("10.1.10.0", struct.pack("!HH", TCP_PORT, 40000) + bytes(16))
    assert _run_filter(program, answer) == 0xFFFF
    assert (
        _run_filter(program, _ip("10.1.10.0", struct.pack("!HH", TCP_PORT, 40001) + bytes(16))) == 0
    )
    assert _run_filter(program, _ip("10.1.10.0", struct.pack("!HH", 443, 40000) + bytes(16))) == 0


def test_pktinfo_names_the_device_and_the_source():
    [(level, kind, data)] = pktinfo(6, IPv4Address("10.1.4.0"))
    assert (level, kind) == (0, 8)
    assert struct.unpack("=i4s4s", data) == (6, bytes([10, 1, 4, 0]), bytes(4))


# -- the healer's orchestration, with a recording backend ---------------------------------


class FakeBackend:
    def __init__(self, peers, unhealable=()):
        self.peers, self._unhealable = list(peers), list(unhealable)
        self.reroutes: list[tuple[str, bool]] = []
        self.udp_started = 0

    def why_not_healing(self):
        return None

    def heal_candidates(self):
        return self.peers

    def unhealable(self):
        return self._unhealable

    def overlay_index(self):
        return 3

    async def udp_index(self):
        self.udp_started += 1
        return 6

    def own_address(self):
        return IPv4Address("10.1.4.0")

    async def reroute(self, subnet, via_udp):
        self.reroutes.append((str(subnet), via_udp))


class FakeProber:
    """VXLAN (device 3) and UDP (device 6) answer as told; the underlay always does."""

    def __init__(self):
        self.vxlan, self.udp = OK, OK

    async def probe(self, target, oif, source):
        return self.vxlan if oif == 3 else self.udp

    async def echo(self, public_ip):
        return True


def probed(state: str) -> ProbeView:
    """The mesh prober's view of a peer's path in ``state``."""
    return ProbeView(state=state, rtt_ms=None, rtt_max_ms=None, loss=0.0, since=0.0)


def _peer(n: int):
    from ipaddress import IPv4Network

    from pyflannel.backend.plan import Peer

    return Peer(
        IPv4Network(f"10.1.{n}.0/24"), IPv4Address(f"198.51.100.{n}"), "vxlan", udp_port=8285
    )


def test_the_healer_moves_a_peer_and_back_and_forgets_one_that_left(caplog):
    import asyncio

    from pyflannel.ops.mesh.healer import PathHealer

    backend, prober = FakeBackend([_peer(2)]), FakeProber()
    healer = PathHealer(backend, interval=0, rate=1000, prober=prober)

    async def rounds(n):
        for _ in range(n):
            await healer.round()

    prober.vxlan = BLOCKED
    asyncio.run(rounds(FAIL_ROUNDS))
    assert backend.reroutes == [("10.1.2.0/24", True)] and backend.udp_started == 1
    assert healer.view()["10.1.2.0/24"].via == "udp" and healer.moves[Encap.UDP] == 1
    assert "moved to UDP (port 8285): vxlan blocked, UDP answers" in caplog.text
    prober.vxlan = OK
    asyncio.run(rounds(BACK_AFTER))
    assert backend.reroutes[-1] == ("10.1.2.0/24", False)
    prober.vxlan = BLOCKED
    asyncio.run(rounds(FAIL_ROUNDS))
    assert backend.reroutes[-1] == ("10.1.2.0/24", True)
    backend.peers = []  # the peer left (or no longer offers UDP): its route goes back
    asyncio.run(rounds(1))
    assert backend.reroutes[-1] == ("10.1.2.0/24", False) and healer.view() == {}


def test_an_unhealable_broken_peer_is_named_once():
    import asyncio
    import logging

    from pyflannel.ops.mesh.healer import PathHealer

    upstream = _peer(3)
    health = {"10.1.3.0/24": probed("unreachable")}
    backend = FakeBackend([], unhealable=[upstream])
    healer = PathHealer(backend, interval=0, health=lambda: health, prober=FakeProber())
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("pyflannel.ops.mesh.healer").addHandler(handler)
    try:
        for _ in range(3):
            asyncio.run(healer.round())
    finally:
        logging.getLogger("pyflannel.ops.mesh.healer").removeHandler(handler)
    named = [r for r in records if "cannot be moved to UDP" in r]
    assert len(named) == 1 and "10.1.3.0/24" in named[0] and "no UDP port" in named[0]
    assert healer.view()["10.1.3.0/24"].cannot_heal.startswith("its lease offers no UDP port")


def test_tcp_broken_in_the_kernels_own_probes_counts_as_vxlan_failing():
    """The healer's SYN carries a checksum computed here; the checksum-offload bug breaks
    the kernel's own TCP, which the mesh prober's probes (through the route) see."""
    import asyncio

    from pyflannel.ops.mesh.healer import PathHealer

    health = {"10.1.2.0/24": probed("tcp broken")}
    backend = FakeBackend([_peer(2)])
    healer = PathHealer(backend, interval=0, rate=1000, health=lambda: health, prober=FakeProber())
    for _ in range(FAIL_ROUNDS):
        asyncio.run(healer.round())
    assert backend.reroutes == [("10.1.2.0/24", True)]
    assert healer.view()["10.1.2.0/24"].why == "vxlan passes ICMP but not TCP"
