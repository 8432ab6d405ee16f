"""nftables specifics (EnableNFTables) in namespaces: upstream's table and rules, drift
repaired (a deleted chain or rule, a flushed ruleset), other tables never touched, switching modes
leaves nothing behind, and an upstream flanneld node (iptables: v0.20.2 predates nftables) in
the same cluster still works, since the mode is local."""

import json
import shutil

import pytest

from testbed.upstream import start_upstream
from tests.conftest import require
from tests.e2e.test_iptables import source_seen

from .conftest import eventually, require_upstream, started_bed

ARGS = ("--reconcile-interval=2", "--ip-masq", "--iptables-resync=1")
NFT_CONFIG = {
    "Network": "10.1.0.0/16",
    "SubnetLen": 24,
    "EnableNFTables": True,
    "Backend": {"Type": "vxlan", "VNI": 1},
}
IPT_CONFIG = {k: v for k, v in NFT_CONFIG.items() if k != "EnableNFTables"}


@pytest.fixture(scope="module")
def bed():
    require(shutil.which("nft") is not None, "the nft command (apt install nftables)")
    bed = started_bed(hosts=2, config=NFT_CONFIG, daemon_args=ARGS)
    yield bed
    bed.close()


def table(node) -> str:
    proc = node.run("nft", "list", "table", "ip", "flannel-ipv4", check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _intact(node):
    text = table(node)
    assert "chain postrtg" in text and text.count("masquerade fully-random") == 2
    assert f"ip saddr {node.subnet} ip daddr 10.1.0.0/16 return" in text
    assert "ip saddr 10.1.0.0/16 accept" in text


def test_upstreams_table_chains_and_rules(bed):
    a = bed.nodes[0]
    text = table(a)
    assert "type nat hook postrouting priority srcnat" in text
    assert "type filter hook forward priority filter" in text
    assert "meta mark 0x00004000 return" in text
    assert f"ip saddr != {a.subnet} ip daddr 10.1.0.0/16 return" in text
    assert "ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random" in text
    assert "FLANNEL" not in a.run("iptables-save").stdout  # the other mode is not used
    doc = a.status()
    assert doc["iptables"]["mode"] == "nftables" and doc["iptables"]["present"] is True
    assert "nftables   masquerade + forward: in place" in a.status_cli().stdout


@pytest.mark.parametrize(
    "damage",
    [
        ["nft", "delete", "chain", "ip", "flannel-ipv4", "postrtg"],
        ["nft", "flush", "ruleset"],
        ["nft", "delete", "rule", "ip", "flannel-ipv4", "forward", "handle", "FIRST"],
    ],
    ids=["chain deleted", "ruleset flushed", "rule deleted"],
)
def test_drift_is_repaired_at_the_next_resync(bed, damage):
    a = bed.nodes[0]
    mark = len(a.log())
    if "FIRST" in damage:
        handles = json.loads(
            a.run("nft", "-j", "list", "chain", "ip", "flannel-ipv4", "forward").stdout
        )
        first = next(o["rule"]["handle"] for o in handles["nftables"] if "rule" in o)
        damage = [str(first) if x == "FIRST" else x for x in damage]
    if damage[1] == "delete" and damage[2] == "chain":
        a.run("nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
    a.run(*damage)
    eventually(lambda: _intact(a), timeout=10)
    assert "nftables rules drifted" in a.log()[mark:]
    assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.underlay_ip)


def test_without_ip_masq_pods_reach_the_outside_with_their_own_address(bed):
    a = bed.nodes[0]
    a.stop()
    a.start("--reconcile-interval=2", "--iptables-resync=1")
    try:
        a.wait_ready()
        text = table(a)
        assert "ip saddr 10.1.0.0/16 accept" in text  # forward rules stay (on by default)
        assert "masquerade" not in text and f"ip saddr {a.subnet}" not in text
        assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.pod_ip)
    finally:
        a.stop()
        a.start(*ARGS)
        a.wait_ready()
    _intact(a)


def test_a_foreign_table_is_never_touched_and_its_drop_policy_shows(bed):
    """A host firewall whose forward chain drops by default (at a lower priority) drops pod
    traffic whatever flannel accepts: nftables runs every base chain of a hook. pyflannel
    leaves that table alone; status still says its own rules are in place (they are), the
    traffic stops, and the README says what to add to the firewall."""
    a, b = bed.nodes
    firewall = a.dir / "firewall.nft"
    firewall.write_text(
        "table inet filter {\n"
        "  chain forward { type filter hook forward priority -10; policy drop; }\n"
        "}\n"
    )
    a.run("nft", "-f", str(firewall))
    try:
        before = a.run("nft", "list", "table", "inet", "filter").stdout
        assert a.ping(b.pod_ip, count=2, wait=0.5).received == 0
        eventually(lambda: _resynced(a), timeout=10)
        assert a.run("nft", "list", "table", "inet", "filter").stdout == before
        assert a.status()["iptables"]["present"] is True
    finally:
        a.run("nft", "delete", "table", "inet", "filter")
    assert eventually(lambda: _reaches(a, b), timeout=10)


def _resynced(node):
    assert node.status()["iptables"]["last_problem"] == ""


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1
    return True


def test_switching_modes_leaves_nothing_behind(bed):
    a = bed.nodes[0]
    table_before = table(a)
    ipt_before = a.run("iptables-save").stdout
    try:
        bed.put_config(IPT_CONFIG)
        a.stop()
        a.start(*ARGS)
        a.wait_ready()
        assert table(a) == ""  # the nftables table is gone ...
        assert "-A FLANNEL-POSTRTG" in a.run("iptables-save").stdout  # ... iptables took over
    finally:
        bed.put_config(NFT_CONFIG)
    a.stop()
    a.start(*ARGS)
    a.wait_ready()
    assert "FLANNEL" not in a.run("iptables-save").stdout  # nothing left of iptables mode
    assert a.run("iptables-save").stdout.count("\n-A ") == ipt_before.count("\n-A ")
    assert _rules(table(a)) == _rules(table_before)  # the same rules again, once each
    elsewhere = a.run("nft", "list", "ruleset").stdout.replace(table(a), "")
    assert "10.1." not in elsewhere  # iptables-nft's own tables keep no rule of ours
    assert a.ping(bed.nodes[1].pod_ip, count=2).lost == 0


def _rules(ruleset: str) -> list[str]:
    """The rule lines of a ruleset (chain order and comments aside)."""
    return sorted(
        line.strip()
        for line in ruleset.splitlines()
        if line.startswith("\t\t") and "comment" not in line
    )


def test_an_upstream_flanneld_node_in_the_same_cluster_still_works(bed):
    require_upstream()
    a, b = bed.nodes
    b.stop()
    try:
        start_upstream(b, "-ip-masq")
        b.add_pod()
        eventually(lambda: _reaches(a, b), timeout=20)
        eventually(lambda: _reaches(b, a), timeout=20)
        assert "FLANNEL-POSTRTG" in b.run("iptables-save").stdout  # upstream: iptables
        _intact(a)  # (b keeps pyflannel's table: v0.20.2 knows no nftables to clean up)
    finally:
        b.stop()
        b.start(*ARGS)
        b.wait_ready()
        b.add_pod()


def test_doctor_names_the_tools_and_warns_of_legacy_iptables_beside_nftables(bed):
    a = bed.nodes[0]

    def doctor():
        return a.doctor()[1]["traffic rules"]

    finding = doctor()
    assert finding["status"] == "pass" and "nf_tables" in finding["detail"]
    assert "ip flannel-ipv4 forward" in finding["detail"]
    require(shutil.which("iptables-legacy") is not None, "iptables-legacy (apt install iptables)")
    a.run("iptables-legacy", "-A", "FORWARD", "-s", "203.0.113.0/24", "-j", "DROP")
    try:
        finding = doctor()
        assert finding["status"] == "warn" and "both hook forward" in finding["detail"]
    finally:
        a.run("iptables-legacy", "-D", "FORWARD", "-s", "203.0.113.0/24", "-j", "DROP")
