"""What both traffic-rules modes (iptables, nftables) must do alike, on real daemons with real
traffic: one set of behaviours, run once per mode. Mode-specific details are in
test_iptables.py and test_nftables.py."""

import pytest

from tests.e2e.test_iptables import source_seen

from .conftest import eventually, rules_bed

ARGS = ("--reconcile-interval=2", "--ip-masq", "--iptables-resync=1")
# How an operator (or a firewall reload) wipes each mode's rules.
WIPE = {
    "iptables": [
        ["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
        ["iptables", "-F", "FLANNEL-FWD"],
    ],
    "nftables": [["nft", "flush", "ruleset"]],
}


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def bed(request):
    bed = rules_bed(request.param, ARGS)
    yield bed
    bed.close()


def test_pods_reach_each_other_with_their_own_addresses(bed):
    a, b = bed.nodes
    assert a.ping(b.pod_ip, count=3).lost == 0
    assert source_seen(b.pod_ns, str(b.pod_ip), a.pod_ns) == str(a.pod_ip)


def test_pods_reach_the_outside_masqueraded(bed):
    a = bed.nodes[0]
    assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.underlay_ip)


def test_status_shows_the_mode_and_the_rules_in_place(bed):
    a = bed.nodes[0]
    doc = a.status()["iptables"]
    assert (doc["mode"], doc["present"], doc["masquerade"], doc["forward"]) == (
        bed.mode,
        True,
        True,
        True,
    )
    assert f"{bed.mode:<10} masquerade + forward: in place" in a.status_cli().stdout


def test_wiped_rules_are_restored_at_the_next_resync_and_said(bed):
    a = bed.nodes[0]
    mark = len(a.log())
    for command in WIPE[bed.mode]:
        a.run(*command)
    eventually(lambda: _present(a), timeout=10)
    assert f"{bed.mode} rules drifted" in a.log()[mark:]
    assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.underlay_ip)


def _present(node):
    doc = node.status()["iptables"]
    assert doc["present"] is True and doc["last_problem"] == ""
