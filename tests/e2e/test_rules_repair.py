"""Flushed rules come back at once: nf_tables announces every change (iptables-nft and nftables
alike) and the daemon checks its rules on that, not at its resync period, which is an hour
here so that only the notification can be what repaired them. The hosts' FORWARD policy is
DROP (as Docker sets it) in iptables mode, so a flush cuts the pod-to-pod path until the
repair. Someone who keeps removing the rules is told once and not fought. Times are in
bench/rules_repair.py; here, behaviour."""

import subprocess
import time

import pytest

from pyflannel.traffic.repair import MAX_REPAIRS, WINDOW
from tests.e2e.test_iptables import source_seen

from .conftest import eventually, rules_bed

ARGS = ("--reconcile-interval=2", "--ip-masq", "--iptables-resync=3600")
FLUSH = {
    "iptables": [["iptables", "-F"], ["iptables", "-t", "nat", "-F"]],
    "nftables": [["nft", "flush", "ruleset"]],
}


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def bed(request):
    bed = rules_bed(request.param, ARGS)
    try:
        if bed.mode == "iptables":
            for node in bed.nodes:  # as Docker leaves a host
                node.run("iptables", "-P", "FORWARD", "DROP")
        yield bed
    finally:
        bed.close()


def _present(node):
    doc = node.status()["iptables"]
    assert doc["present"] is True, doc


def _pod_path(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


def test_a_flush_is_repaired_on_notice_and_the_pod_path_is_back(bed):
    a, b = bed.nodes
    eventually(lambda: _pod_path(b, a), timeout=10)
    mark = len(a.log())
    for command in FLUSH[bed.mode]:
        a.run(*command)
    a.wait_log(rf"{bed.mode} rules drifted", after=mark, timeout=20)
    eventually(lambda: _present(a), timeout=10)
    eventually(lambda: _pod_path(b, a), timeout=10)
    assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.underlay_ip)


def test_a_firewall_reload_without_our_rules_is_repaired_on_notice(bed):
    """A saved rule set from before the daemon (nothing of ours in it) restored whole."""
    a = bed.nodes[0]
    if bed.mode == "iptables":
        saved = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        saved += "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
        reload = ["iptables-restore"]
    else:
        saved = "flush ruleset\ntable inet host-firewall {\n chain input { type filter hook input priority 0; }\n}\n"
        reload = ["nft", "-f", "-"]
    mark = len(a.log())
    subprocess.run(["ip", "netns", "exec", a.ns, *reload], input=saved, text=True, check=True)
    a.wait_log(rf"{bed.mode} rules drifted", after=mark, timeout=20)
    eventually(lambda: _present(a), timeout=10)


def test_someone_who_keeps_removing_them_is_told_once_and_not_fought(bed):
    a, b = bed.nodes
    restores = a.status()["iptables"]["restores"]
    mark = len(a.log())
    for _ in range(4 * MAX_REPAIRS):  # a firewall manager reloading in a loop
        for command in FLUSH[bed.mode]:
            a.run(*command)
        time.sleep(0.05)
    a.wait_log(r"removed \d+ times in [\d.]+ s by something else", after=mark, timeout=20)
    log = a.log()[mark:]
    assert log.count("by something else") == 1, log[-2000:]
    assert a.status()["iptables"]["restores"] - restores <= MAX_REPAIRS + 1
    # Once it has stopped for a while, the rules are checked and repaired at once, and a
    # flush is repaired on notice again.
    a.wait_log(r"nothing removed them for [\d.]+ s; checked now", after=mark, timeout=WINDOW + 10)
    eventually(lambda: _present(a), timeout=10)
    eventually(lambda: _pod_path(b, a), timeout=10)
    mark = len(a.log())
    for command in FLUSH[bed.mode]:
        a.run(*command)
    a.wait_log(rf"{bed.mode} rules drifted", after=mark, timeout=20)
    eventually(lambda: _present(a), timeout=10)
