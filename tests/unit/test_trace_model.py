"""A trace as pure data (ops/trace/model.py): the nodes at both ends from their leases, each
place judged from facts already gathered, rendered for people and scripts. The I/O that
gathers the facts runs end to end in tests/e2e/test_trace.py."""

import json
from ipaddress import IPv4Address, IPv4Network

from pyflannel.ops.trace.model import (
    Trace,
    judge_fdb,
    judge_neighbour,
    judge_route,
    judge_rules,
    locate,
    node_of,
    render,
)
from pyflannel.ops.trace.rules import Verdict
from pyflannel.subnet.lease import Lease, LeaseAttrs

MAC = "aa:bb:cc:00:00:02"


def lease(subnet: str, public_ip: str, backend: str = "vxlan", data=None) -> Lease:
    attrs = LeaseAttrs(
        public_ip=IPv4Address(public_ip),
        backend_type=backend,
        backend_data={"VNI": 1, "VtepMAC": MAC} if data is None else data,
    )
    return Lease(subnet=IPv4Network(subnet), attrs=attrs)


def vxlan_trace() -> Trace:
    t = Trace("10.1.1.5", "10.1.2.7")
    t.dst_node = node_of(lease("10.1.2.0/24", "192.168.5.2"), "10.1.1.0/24")
    return t


def test_a_lease_is_a_node_and_bad_backend_data_shows_as_missing():
    node = node_of(lease("10.1.2.0/24", "192.168.5.2"), "10.1.2.0/24")
    assert (node.vtep_mac, node.this_node, str(node.overlay_address)) == (MAC, True, "10.1.2.0")
    assert (
        node.describe()
        == "10.1.2.0/24 held by 192.168.5.2 (this node), vxlan (VTEP MAC " + MAC + ")"
    )
    junk = node_of(lease("10.1.3.0/24", "192.168.5.3", data={"VtepMAC": "not a mac"}), None)
    assert junk.vtep_mac == "" and not junk.this_node
    udp = node_of(lease("10.1.4.0/24", "192.168.5.4", backend="udp", data={"Port": 8285}), None)
    assert udp.udp_port == 8285 and udp.describe().endswith("udp (UDP port 8285)")


def test_an_address_is_located_by_subnet_then_by_public_ip():
    leases = [lease("10.1.2.0/24", "192.168.5.2"), lease("10.1.3.0/24", "192.168.5.3")]
    assert locate(IPv4Address("10.1.3.9"), leases) is leases[1]
    assert locate(IPv4Address("192.168.5.2"), leases) is leases[0]
    assert locate(IPv4Address("10.2.0.1"), leases) is None


def test_the_vxlan_route_must_be_onlink_via_the_peers_device_address():
    t = vxlan_trace()
    assert (
        judge_route(t, t.dst_node, {"dev": "flannel.1", "gateway": "10.1.2.0"}, False)
        == "flannel.1"
    )
    assert t.steps[-1].ok is True
    assert judge_route(t, t.dst_node, {"dev": "eth0", "gateway": "192.168.5.1"}, False) is None
    assert (
        t.steps[-1].ok is False and "expected via 10.1.2.0 dev flannel.<VNI>" in t.steps[-1].detail
    )
    assert judge_route(t, t.dst_node, None, False) is None
    assert t.failure is t.steps[1]  # the first failure is kept
    healed = judge_route(t, t.dst_node, {"dev": "flannel0", "gateway": None}, True)
    assert healed == "flannel0" and "the path healer moved it" in t.steps[-1].detail


def test_neighbour_and_fdb_are_judged_against_the_lease():
    t = vxlan_trace()
    node = t.dst_node
    assert judge_neighbour(t, node, "flannel.1", {"10.1.2.0": MAC})
    assert not judge_neighbour(t, node, "flannel.1", {"10.1.2.0": "aa:bb:cc:00:00:09"})
    assert "the lease says " + MAC in t.steps[-1].detail
    assert not judge_neighbour(t, node, "flannel.1", {})
    assert f"lladdr {MAC} dev flannel.1 nud permanent" in t.steps[-1].fix
    assert judge_fdb(t, node, "flannel.1", {MAC: "192.168.5.2"})
    assert not judge_fdb(t, node, "flannel.1", {MAC: "192.168.5.99"})
    assert "but the node is at 192.168.5.2" in t.steps[-1].detail


def test_rules_drop_is_a_failure_with_the_rule_and_a_maybe_is_said():
    t = vxlan_trace()
    assert not judge_rules(t, Verdict(False, "-A FORWARD -j DROP"), True, "masq")
    assert t.steps[-1].detail == "the filter table's FORWARD drops it: -A FORWARD -j DROP"
    assert judge_rules(t, Verdict(True, "policy ACCEPT", ["-A X -m state -j DROP"]), True, "m")
    assert "may drop some traffic: -A X -m state -j DROP" in t.steps[-1].detail
    assert judge_rules(t, None, True, "m") and t.steps[-1].ok is None
    assert judge_rules(t, None, False, "m") and t.steps[-1].ok is True


def test_the_verdict_names_the_first_failure_for_people_and_scripts():
    t = vxlan_trace()
    t.add("store", True, "found")
    assert render(t).endswith("verdict: OK: every place checked passes\n")
    t.add("fdb", False, "no FDB entry", "bridge fdb replace ...")
    t.add("rules", False, "later")
    text = render(t)
    assert (
        "  FAILED  fdb            no FDB entry\n" in text and "fix: bridge fdb replace ..." in text
    )
    assert text.endswith("verdict: BROKEN at fdb: no FDB entry\n")
    doc = json.loads(json.dumps(t.document()))
    assert doc["verdict"] == "broken" and doc["first_failure"]["place"] == "fdb"
    assert doc["dst_node"]["vtep_mac"] == MAC
