"""The alloc backend (upstream pkg/backend/alloc): two pyflannel nodes and one upstream flanneld
v0.20.2 share a network whose Backend is alloc. Leases are acquired, renewed and kept, their
bytes are upstream's; nothing enters the kernel: no device, no route, no rule."""

import json

import pytest

from .conftest import FAST_RECONCILE, beside_upstream, eventually, renewals

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "alloc"}}


@pytest.fixture(scope="module")
def bed():
    yield from beside_upstream(CONFIG, (*FAST_RECONCILE, "--subnet-lease-ttl=12"))


def _lease_value(bed, node) -> str:
    key = f"/coreos.com/network/subnets/{node.subnet.network_address}-24"
    return bed.leases()[key]


def test_the_lease_is_upstreams_byte_for_byte(bed):
    a, up = bed.nodes[0], bed.nodes[2]
    assert _lease_value(bed, a) == f'{{"PublicIP":"{a.underlay_ip}","PublicIPv6":null}}'
    assert _lease_value(bed, up) == f'{{"PublicIP":"{up.underlay_ip}","PublicIPv6":null}}'
    env = a.subnet_env()
    assert env["FLANNEL_MTU"] == "1500"  # the interface's: nothing is encapsulated
    assert env["FLANNEL_SUBNET"] == f"{a.subnet.network_address + 1}/24"


def test_leases_are_renewed_and_kept(bed):
    a, b = bed.nodes[:2]
    subnets = {n: n.subnet for n in (a, b)}
    before = {n: renewals(n) for n in (a, b)}
    for node in (a, b):  # TTL 12 s: renewed every 6 s
        eventually(lambda node=node: _renewed(node, before[node]), timeout=20)
        assert node.subnet == subnets[node]
        assert node.status()["lease"]["subnet"] == str(subnets[node])


def _renewed(node, before: int) -> None:
    assert renewals(node) > before


def test_every_peer_is_listed_and_none_is_programmed(bed):
    a, b, up = bed.nodes
    doc = a.status()
    assert doc["backend"]["type"] == "alloc"
    assert {r["subnet"] for r in doc["peers"]} == {str(b.subnet), str(up.subnet)}
    # nothing to program, nothing to probe: the only remark is the short test TTL
    text = a.status_cli().stdout
    remarks = [line for line in text.splitlines()[1:] if line.startswith("  ") and line[2] in "!~"]
    assert [r for r in remarks if "lease expires in" not in r] == [], text
    assert "none" in text  # the peers' encapsulation column


def test_no_device_no_route_no_rule(bed):
    for node in bed.nodes[:2]:
        links = {link["ifname"] for link in node.ip_json("link", "show")}
        assert not {name for name in links if name.startswith("flannel")}, links
        assert node.ip_json("route", "show", "proto", "152") == []
        assert node.ip_json("-6", "route", "show", "proto", "152") == []
        assert node.run("bridge", "fdb", "show", "dev", "eth0").stdout.count("flannel") == 0
        rules = (
            node.run("iptables", "-w", "-S").stdout
            + node.run("iptables", "-w", "-t", "nat", "-S").stdout
        )
        assert "FLANNEL" not in rules and "flanneld" not in rules, rules


def test_a_peer_gone_is_dropped_from_the_list(bed):
    a = bed.nodes[0]
    key = "/coreos.com/network/subnets/10.1.240.0-24"
    bed.etcd.put(key, json.dumps({"PublicIP": "198.51.100.240", "PublicIPv6": None}))
    eventually(lambda: _listed(a, "10.1.240.0/24", True), timeout=10)
    bed.etcd.ctl("del", key)
    eventually(lambda: _listed(a, "10.1.240.0/24", False), timeout=10)
    assert a.ip_json("route", "show", "proto", "152") == []


def _listed(node, subnet: str, present: bool) -> None:
    assert (subnet in {r["subnet"] for r in node.status()["peers"]}) == present
