"""A path's MTU measured and fixed (ops/mesh/path_mtu.py, pure): the bisection, the hold and
its damping, the MSS; the fix as kernel entries (backend/plan.with_path_mtu) and as rules in
both modes, each network's own (traffic/)."""

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from pyflannel.backend.plan import Route, Via, overlay_entries, underlay_route, with_path_mtu
from pyflannel.ops.mesh.path_mtu import (
    BACK_AFTER,
    DAMP_WINDOW,
    HOLD,
    MAX_HOLD,
    MAX_PROBES,
    Bisection,
    Damping,
    PathFix,
    describe,
    full_size_round,
    mss_for,
    next_hold,
)


@pytest.mark.parametrize("carried", [64 + 1, 576, 1350, 1400, 1449, 8950])
def test_the_bisection_finds_the_exact_size_within_its_probes(carried):
    top = 9000 if carried > 1450 else 1450
    search = Bisection(passes=64, fails=top)
    while (size := search.next_size()) is not None:
        search.record(size, size <= carried)
    assert search.found == carried and search.probes <= MAX_PROBES


def test_the_bisection_stops_at_its_limit_with_the_largest_size_seen_to_pass():
    search = Bisection(passes=64, fails=1450, limit=3)
    while (size := search.next_size()) is not None:
        search.record(size, size <= 1350)
    assert search.probes == 3 and 64 <= search.found <= 1350  # never above what passed


def test_the_mss_leaves_room_for_the_headers_of_each_family():
    assert mss_for(1350, 4) == 1310 and mss_for(1350, 6) == 1290


def test_a_fix_goes_after_enough_full_size_rounds_and_not_before_its_hold():
    fix = PathFix(1350, since=1000.0, probes=11)
    now = 1000.0 + HOLD
    assert not any(full_size_round(fix, True, now) for _ in range(BACK_AFTER - 1))
    assert full_size_round(fix, True, now)
    young = PathFix(1350, since=now, probes=11)
    assert not any(full_size_round(young, True, now + 1) for _ in range(BACK_AFTER * 3))
    lost = PathFix(1350, since=0.0, probes=11)
    results = [full_size_round(lost, passed, now) for passed in (True, True, False, True, True)]
    assert not any(results)  # one lost round starts the count again


def test_a_path_fixed_again_soon_after_its_return_is_held_twice_as_long():
    damping = Damping()
    assert next_hold(damping, 5000.0) == HOLD  # never fixed before
    damping.returned, damping.hold = 5000.0, HOLD
    assert next_hold(damping, 5000.0 + DAMP_WINDOW - 1) == 2 * HOLD
    damping.hold = MAX_HOLD
    assert next_hold(damping, 5001.0) == MAX_HOLD
    assert next_hold(damping, 5000.0 + DAMP_WINDOW + 1) == HOLD  # long quiet: from the start


def test_the_log_line_names_the_path_the_sizes_and_the_fix():
    assert describe("10.1.8.0/24", 1350, 1450, 4) == (
        "path to 10.1.8.0/24 carries 1350 bytes, not 1450: route MTU 1350 and MSS clamp 1310 "
        "for that peer"
    )


def test_only_the_fixed_peers_route_carries_the_mtu():
    a, b = IPv4Network("10.1.3.0/24"), IPv4Network("10.1.4.0/24")
    entries = overlay_entries(a, "aa:bb:cc:dd:ee:ff", IPv4Address("198.51.100.3"))
    entries.add(underlay_route(b, IPv4Address("198.51.100.4")))
    fixed = with_path_mtu(entries, {a: 1350})
    assert fixed.routes[a] == Route(a.network_address, Via.ONLINK, 1350)
    assert fixed.routes[b].mtu == 0
    assert fixed.neighbours == entries.neighbours and fixed.fdb == entries.fdb
    assert entries.routes[a].mtu == 0  # the peer's own entries are not changed
    assert with_path_mtu(entries, {}) is entries


def test_iptables_clamps_both_directions_of_each_fixed_peer_in_a_shared_chain():
    from pyflannel.traffic.iptables_rules import claim, mss_rules

    rules = mss_rules({IPv4Network("10.1.3.0/24"): 1310})
    c = '-m comment --comment "pyflannel path mtu"'
    syn = "-p tcp -m tcp --tcp-flags SYN,RST SYN"
    assert [(r.table, r.line) for r in rules] == [
        ("mangle", f"-A FORWARD {c} -j FLANNEL-MSS"),
        ("mangle", f"-A FLANNEL-MSS -s 10.1.3.0/24 {syn} {c} -j TCPMSS --set-mss 1310"),
        ("mangle", f"-A FLANNEL-MSS -d 10.1.3.0/24 {syn} {c} -j TCPMSS --set-mss 1310"),
    ]
    # two networks on one host: each clamp line is the network's whose subnet it names
    ours, theirs = IPv4Network("10.1.0.0/16"), IPv4Network("10.3.0.0/16")
    other = f"-A FLANNEL-MSS -d 10.3.7.0/24 {syn} {c} -j TCPMSS --set-mss 1290"
    assert claim(rules[1].line, rules, ours) == "ours"
    assert claim(other, rules, ours) == "others"
    assert claim(rules[1].line, mss_rules({IPv4Network("10.3.7.0/24"): 1290}), theirs) == "others"


def test_a_clamp_removed_leaves_the_other_networks_lines_and_the_chain():
    from pyflannel.traffic.iptables_rules import cleanup_payload

    c = '-m comment --comment "pyflannel path mtu"'
    syn = "-p tcp -m tcp --tcp-flags SYN,RST SYN"
    listed = [
        "-N FLANNEL-MSS",
        f"-A FORWARD {c} -j FLANNEL-MSS",
        f"-A FLANNEL-MSS -d 10.1.3.0/24 {syn} {c} -j TCPMSS --set-mss 1310",
        f"-A FLANNEL-MSS -d 10.3.7.0/24 {syn} {c} -j TCPMSS --set-mss 1290",
    ]
    payload = cleanup_payload("mangle", listed, IPv4Network("10.1.0.0/16"))
    assert payload is not None
    assert f"-D FLANNEL-MSS -d 10.1.3.0/24 {syn} {c} -j TCPMSS --set-mss 1310" in payload
    assert "10.3.7.0" not in payload and "-X FLANNEL-MSS" not in payload
    alone = cleanup_payload("mangle", listed[:3], IPv4Network("10.1.0.0/16"))
    assert alone is not None and "-X FLANNEL-MSS" in alone and "-D FORWARD" in alone


def test_nftables_clamps_only_larger_mss_in_its_own_chain_per_family():
    from pyflannel.traffic.nftables_rules import CHAINS, mss_rules

    rules = mss_rules({IPv4Network("10.1.3.0/24"): 1310, IPv6Network("fd00:1:3::/64"): 1290})
    assert {r.chain for r in rules} == {"mss"} and "priority mangle" in CHAINS["mss"]
    assert [r.text for r in rules] == [
        "ip saddr 10.1.3.0/24 tcp flags syn / syn,rst tcp option maxseg size > 1310 "
        "tcp option maxseg size set 1310",
        "ip daddr 10.1.3.0/24 tcp flags syn / syn,rst tcp option maxseg size > 1310 "
        "tcp option maxseg size set 1310",
        "ip6 saddr fd00:1:3::/64 tcp flags syn / syn,rst tcp option maxseg size > 1290 "
        "tcp option maxseg size set 1290",
        "ip6 daddr fd00:1:3::/64 tcp flags syn / syn,rst tcp option maxseg size > 1290 "
        "tcp option maxseg size set 1290",
    ]


# -- the fixer's decisions, round by round (the prober and the kernel faked: the I/O is
#    tests/e2e/test_path_mtu.py's) --------------------------------------------------------


class FakeProber:
    """Rounds of results: ``full`` per subnet says whether the full-size probe passed."""

    def __init__(self, peers, carries: int):
        from pyflannel.ops.mesh.health import PathRecord

        self._peers = peers
        self.records = {p.subnet: PathRecord() for p in peers}
        self.carries = carries  # what every path carries now
        self.measured = 0

    def peers(self):
        return self._peers

    def round(self, pod_mtu: int = 1450) -> None:
        for record in self.records.values():
            record.add("small", 0.3, 0.0)
            record.add("full", 0.3 if self.carries >= pod_mtu else None, 0.0)
            record.add("tcp", 0.3, 0.0)

    async def largest(self, half, too_large):
        self.measured += 1
        return min(self.carries, too_large), 11, 0.4

    async def passes(self, half, size):
        return size <= self.carries


def _peer(subnet: str):
    from pyflannel.backend.plan import Peer

    return Peer(IPv4Network(subnet), IPv4Address("198.51.100.3"), "vxlan")


def _fixer(prober, fail_clamps: bool = False):
    from pyflannel.errors import FlannelError
    from pyflannel.ops.mesh.mtu_fixer import PathMtuFixer

    routes, clamps = {}, []

    async def route_mtu(subnet, mtu):
        routes[subnet] = mtu

    async def set_clamps(wanted):
        if fail_clamps:
            raise FlannelError("iptables-restore failed")
        clamps.append(dict(wanted))

    return PathMtuFixer(prober, route_mtu, set_clamps, lambda: 1450), routes, clamps


async def test_a_black_hole_is_fixed_once_and_undone_when_its_peer_leaves():
    peer = _peer("10.1.3.0/24")
    prober = FakeProber([peer], carries=1350)
    fixer, routes, clamps = _fixer(prober)
    for _ in range(5):
        prober.round()
        await fixer.after_round()
    assert routes == {peer.subnet: 1350} and clamps == [{peer.subnet: 1310}]
    assert prober.measured == 1 and fixer.probes == 11  # measured once, not every round
    view = fixer.annotate({"10.1.3.0/24": prober_view()})["10.1.3.0/24"]
    assert view.path_mtu == 1350 and view.path_mtu_probes == 11
    prober._peers = []
    await fixer.after_round()
    assert routes == {peer.subnet: None} and clamps[-1] == {}


async def test_a_path_narrowed_further_is_measured_again():
    peer = _peer("10.1.3.0/24")
    prober = FakeProber([peer], carries=1350)
    fixer, routes, _ = _fixer(prober)
    for _ in range(4):
        prober.round()
        await fixer.after_round()
    prober.carries = 1300
    for _ in range(3):  # three rounds in a row the fixed size is lost
        prober.round()
        await fixer.after_round()
    assert routes[peer.subnet] == 1300 and prober.measured == 2


async def test_clamps_the_rules_refused_are_set_again_next_round_and_the_route_stays():
    peer = _peer("10.1.3.0/24")
    prober = FakeProber([peer], carries=1350)
    fixer, routes, _ = _fixer(prober, fail_clamps=True)
    for _ in range(4):
        prober.round()
        await fixer.after_round()
    assert routes == {peer.subnet: 1350} and fixer._clamps_stale


def prober_view():
    from pyflannel.ops.snapshot import ProbeView

    return ProbeView("mtu black hole", 0.3, 0.3, 0.0, 0.0)
