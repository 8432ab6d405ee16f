"""A VXLAN network where some nodes cannot do VXLAN: node 3's kernel refuses the device (a
VXLAN device with the same VNI already exists there), so it falls back to UDP by itself;
node 4 is forced to UDP with --backend-fallback=udp. Every pair reaches each other, and the
two VXLAN nodes keep VXLAN between themselves."""

import json

import pytest

from testbed import netns
from testbed.bed import TestBed
from testbed.capture import finish_capture, start_capture

from .conftest import FAST_RECONCILE, eventually, require_testbed


@pytest.fixture(scope="module")
def bed():
    require_testbed()
    with TestBed(hosts=4) as bed:
        bed.put_config()
        netns.ip(
            bed.nodes[2].ns, "link", "add", "blocker", "type", "vxlan", "id", "1", "dstport", "8472"
        )
        for node in bed.nodes[:3]:
            node.start(*FAST_RECONCILE)
        bed.nodes[3].start(*FAST_RECONCILE, "--backend-fallback=udp")
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


def lease_of(bed, node) -> dict:
    return json.loads(bed.etcd.get(f"/coreos.com/network/subnets/{node.subnet.network_address}-24"))


def test_a_node_whose_kernel_refuses_vxlan_falls_back_and_says_so(bed):
    node = bed.nodes[2]
    assert (
        "VXLAN FALLBACK" in node.log()
        and "A VXLAN device with the specified VNI already exists" in node.log()
    )
    lease = lease_of(bed, node)
    assert lease["BackendType"] == "udp" and lease["BackendData"]["Port"] == 8285
    assert "VNI already exists" in lease["BackendData"]["Reason"]
    assert node.mtu == 1472


def test_a_forced_node_says_why_in_its_lease(bed):
    lease = lease_of(bed, bed.nodes[3])
    assert lease["BackendType"] == "udp"
    assert lease["BackendData"]["Reason"] == "forced by --backend-fallback=udp"


def test_vxlan_nodes_advertise_that_they_accept_udp(bed):
    for node in bed.nodes[:2]:
        data = lease_of(bed, node)["BackendData"]
        assert data["UDPPort"] == 8285 and data["VNI"] == 1


def test_every_pair_reaches_each_other_both_ways(bed):
    for src in bed.nodes:
        for dst in bed.nodes:
            if src is not dst:
                eventually(lambda src=src, dst=dst: _reach(src, dst), timeout=10)


def _reach(src, dst):
    result = src.ping(dst.pod_ip, count=2, interval=0.1)
    assert result.received == 2, f"{src.ns} -> {dst.ns}: {result.output}"


def test_vxlan_pairs_stay_on_vxlan_and_udp_peers_go_through_flannel0(bed):
    a, b, c, d = bed.nodes
    routes = {r["dst"]: r["dev"] for r in a.routes()}
    assert routes[str(b.subnet)] == "flannel.1"
    assert routes[str(c.subnet)] == "flannel0" and routes[str(d.subnet)] == "flannel0"
    # The UDP-only nodes route the whole network into their TUN device.
    assert [(r["dst"], r["dev"]) for r in c.routes()] == [("10.1.0.0/16", "flannel0")]


def test_the_wire_shows_vxlan_between_vxlan_nodes_and_udp_to_the_fallback_node(bed):
    a, b, c, _ = bed.nodes
    capture = start_capture(bed.lan, f"v{a.index}", seconds=2.0)
    a.ping(b.pod_ip, count=2, interval=0.1)
    a.ping(c.pod_ip, count=2, interval=0.1)
    packets = finish_capture(capture)
    to_b = [p for p in packets if p.get("inner_dst") == str(b.pod_ip)]
    to_c = [p for p in packets if p.get("inner_dst") == str(c.pod_ip)]
    assert to_b and all(p["dport"] == 8472 and p["vni"] == 1 for p in to_b)
    assert to_c and all(p["dport"] == 8285 and "vni" not in p for p in to_c)


def test_automatic_fallback_can_be_turned_off(bed):
    node = bed.nodes[2]
    node.stop()
    try:
        node.start(*FAST_RECONCILE, "--backend-fallback=off")
        node.proc.wait(20)
        assert node.proc.returncode == 1
        assert "and --backend-fallback=off" in node.log()
    finally:
        node.start(*FAST_RECONCILE)
        node.wait_ready()
