"""etcd stretched across two sites: members e1, e2 and node 1 on site A, e3 and node 2 on site B,
every etcd connection across the sites delayed (testbed.delay; no netem here). Nodes on both
sites acquire and renew short leases, programme each other, name the round trips in status,
and ride out a leader change the latency itself causes; the overlay never waits on etcd."""

import time

import pytest

from testbed.sites import TwoSiteBed

from .conftest import PEER_VALUE, eventually, renewals, require_testbed

ONE_WAY_MS = 25  # round trip across the sites: 50 ms
ARGS = ("--reconcile-interval=5", "--subnet-lease-ttl=15")


@pytest.fixture(scope="module")
def bed():
    require_testbed()
    with TwoSiteBed(
        hosts=2, etcd_members=3, far_members={3}, far_nodes={2}, one_way_ms=ONE_WAY_MS
    ) as bed:
        bed.put_config()
        for node in bed.nodes:
            node.start(*ARGS)
        for node in bed.nodes:
            node.wait_ready(timeout=40)
            node.add_pod()
        yield bed


def test_status_shows_the_round_trips_of_each_site(bed):
    far_node = bed.nodes[1]  # site B: e3 is near, e1 and e2 are across
    doc = far_node.status()
    rtt = {m["name"]: m["rtt_ms"] for m in doc["etcd"]["members"]}
    assert rtt["e1"] >= 2 * ONE_WAY_MS and rtt["e2"] >= 2 * ONE_WAY_MS, rtt
    assert rtt["e3"] < ONE_WAY_MS, rtt
    # Raft's own figure, across (etcd probes its peers' round trip every few seconds)
    eventually(lambda: _raft_round_trips_across(far_node), timeout=60, interval=2)
    # and the advice: a node far from etcd; Raft's round trip against the heartbeat interval.
    # The p99 shown is the lower bound of etcd's bucket: a ~50 ms round trip reads 25.6 or
    # 51.2 ms depending on which side of 51.2 it falls, so judge it against a 40 ms heartbeat
    # interval (near it from 20 ms), not the default 100 ms (from 50 ms)
    text = far_node.status_cli("--etcd-heartbeat-interval=40").stdout
    assert "advice: round trip to etcd member e1 is" in text, text
    assert "advice: the Raft round trip between etcd members e3 and e1" in text, text
    assert "--heartbeat-interval to about" in text, text


def _raft_round_trips_across(node) -> None:
    e3 = next(m for m in node.status()["etcd"]["members"] if m["name"] == "e3")
    across = list(e3["peer_rtt_p99_ms"].values())
    # at least half the round trip: the lower bound of the (doubling) bucket holding it
    assert len(across) == 2 and min(across) >= ONE_WAY_MS, e3


def test_nodes_on_both_sites_keep_renewing_and_reach_each_other(bed):
    before = {n: renewals(n) for n in bed.nodes}
    eventually(lambda: all(renewals(n) >= before[n] + 2 for n in bed.nodes), timeout=30)
    a, b = bed.nodes
    for src, dst in ((a, b), (b, a)):
        result = src.ping(dst.pod_ip, count=3)
        assert result.lost == 0, result.output


def test_a_lease_reaches_both_sites(bed):
    """Lease to route on each site, next to the round trip across (printed for bench/README)."""
    subnet = "10.1.210.0/24"
    key = f"/coreos.com/network/subnets/{subnet.replace('/', '-')}"
    t0 = time.monotonic()
    bed.etcd.put(key, PEER_VALUE)
    seconds = {}
    deadline = t0 + 30
    while len(seconds) < len(bed.nodes):
        assert time.monotonic() < deadline, seconds
        for node in bed.nodes:
            if node not in seconds and node.has_route(subnet):
                seconds[node] = time.monotonic() - t0
        time.sleep(0.02)
    bed.etcd.ctl("del", key)
    a, b = bed.nodes
    print(f"\nSTRETCHED rtt {2 * ONE_WAY_MS} ms: site A {seconds[a]:.3f} s, B {seconds[b]:.3f} s")


def test_a_leader_change_caused_by_latency_is_ridden_out(bed):
    """Round trips across jump past the election timeout for a while: the cluster elects a
    leader again (etcd's own count, as status shows it); no node loses its lease, the overlay
    loses no packet, a lease written after reaches both sites."""
    a, b = bed.nodes
    subnets = {n: n.subnet for n in bed.nodes}
    before = _elections_seen(a)
    ping = b.start_ping(a.pod_ip, interval=0.05)
    try:
        # Nothing arrives across for ~5 s: messages sent in the next 3 s are due 5 s later, and
        # the relay keeps each connection in order, so those sent after wait behind them.
        # The side without the leader hears no heartbeat for longer than any randomized
        # election timeout (1-2 s) and campaigns: etcd elects again. (A steady delay would
        # not: heartbeats keep arriving, only late.)
        bed.set_delay(5000)
        time.sleep(3)
    finally:
        bed.set_delay(ONE_WAY_MS)
    eventually(lambda: _elections_above(a, before), timeout=30, interval=1)
    result = b.finish_ping(ping, interrupt=True)
    assert result.sent > 20 and result.lost == 0, result.output[-400:]
    for node in bed.nodes:
        assert node.subnet == subnets[node]
        eventually(lambda node=node: _holds(node, subnets[node]), timeout=30)
    test_a_lease_reaches_both_sites(bed)


def _elections_seen(node) -> int:
    """The most leader changes any near member (site A: e1, e2) has counted."""
    members = [m for m in node.status()["etcd"]["members"] if m["name"] in ("e1", "e2")]
    assert members, "status could not list the members meanwhile"
    return max(m.get("leader_changes") or 0 for m in members)


def _elections_above(node, before: int) -> None:
    assert _elections_seen(node) > before


def _holds(node, subnet) -> None:
    lease = node.status()["lease"]
    assert lease["subnet"] == str(subnet) and lease["expires_in_s"] > 0
