"""The host-gw backend on the bed: upstream's lease bytes, a route per peer via its public IP
(owned, repaired), the interface MTU, an off-link peer refused once with its reason and never
half-programmed, and a mixed cluster with upstream flanneld v0.20.2's host-gw."""

import json

import pytest

from testbed.upstream import start_upstream

from .conftest import FAST_RECONCILE, eventually, require_upstream, started_bed

CONFIG = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=3, config=CONFIG, daemon_args=FAST_RECONCILE)
    yield bed
    bed.close()


def test_the_lease_is_upstreams_byte_for_byte_and_the_mtu_the_interfaces(bed):
    a = bed.nodes[0]
    key = f"/coreos.com/network/subnets/{a.subnet.network_address}-24"
    assert (
        bed.leases()[key] == '{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"host-gw"}'
    )
    assert a.mtu == 1500


def test_a_route_per_peer_via_its_public_ip(bed):
    a = bed.nodes[0]
    routes = {r["dst"]: r for r in a.routes()}
    for peer in bed.nodes[1:]:
        route = routes[str(peer.subnet)]
        assert route["gateway"] == str(peer.underlay_ip) and route["dev"] == "eth0"
    assert a.run("ip", "link", "show", "flannel.1", check=False).returncode != 0  # no device


def test_every_pod_pair_reaches_each_other_unencapsulated(bed):
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                assert a.ping(b.pod_ip, count=2, interval=0.1).lost == 0, (a.ns, b.ns)


def test_a_deleted_route_is_repaired(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    a.run("ip", "route", "del", str(b.subnet))
    eventually(lambda: _has_route(a, b), timeout=5)
    assert a.ping(b.pod_ip, count=2, interval=0.1).lost == 0


def _has_route(a, b):
    assert str(b.subnet) in {r["dst"] for r in a.routes()}


def test_an_off_link_peer_is_refused_once_with_its_reason_and_never_half_programmed(bed):
    a = bed.nodes[0]
    mark = len(a.log())
    key = "/coreos.com/network/subnets/10.1.250.0-24"
    value = {"PublicIP": "203.0.113.9", "PublicIPv6": None, "BackendType": "host-gw"}
    bed.etcd.put(key, json.dumps(value, separators=(",", ":")))
    try:
        a.wait_log(
            r"ignoring lease 10\.1\.250\.0/24 from 203\.0\.113\.9: PublicIP 203\.0\.113\.9 is "
            r"not directly reachable",
            after=mark,
        )
        eventually(lambda: _ignored(a), timeout=5)
        assert "10.1.250.0/24" not in {r["dst"] for r in a.routes()}
        assert a.log()[mark:].count("ignoring lease 10.1.250.0/24") == 1  # once, not per pass
        assert a.ping(bed.nodes[1].pod_ip, count=2, interval=0.1).lost == 0  # nothing else lost
    finally:
        bed.etcd.ctl("del", key)


def _ignored(node):
    assert any(
        i.startswith("10.1.250.0/24: PublicIP 203.0.113.9") for i in node.status()["ignored"]
    )


def test_mixed_with_upstream_flanneld_host_gw(bed):
    require_upstream()
    c = bed.nodes[2]
    c.stop()
    try:
        start_upstream(c)
        c.add_pod()
        for a in bed.nodes[:2]:
            eventually(lambda a=a: _reaches(a, c), timeout=20)
            eventually(lambda a=a: _reaches(c, a), timeout=20)
        route = {r["dst"]: r for r in c.ip_json("route", "show")}[str(bed.nodes[0].subnet)]
        assert route["gateway"] == str(bed.nodes[0].underlay_ip)  # upstream programmed us
    finally:
        c.stop()
        c.start(*FAST_RECONCILE)
        c.wait_ready()
        c.add_pod()


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


def test_trace_follows_the_plain_route_and_probes_the_peers_bridge(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    proc = a.trace_cli(str(a.pod_ip), str(b.pod_ip), "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["verdict"] == "ok", doc
    assert doc["encapsulation"] == "none (routed)" and doc["pod_mtu"] == 1500
    steps = {s["place"]: s for s in doc["steps"]}
    assert steps["route"]["ok"] and "host-gw: straight to the peer" in steps["route"]["detail"]
    assert f"to {b.subnet.network_address + 1}:" in steps["encapsulation"]["detail"]
    assert "neighbour" not in steps and steps["destination"]["ok"]
