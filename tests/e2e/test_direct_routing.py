"""DirectRouting: peers on the same link get a plain route via their public IP, no tunnel."""

import pytest

from .conftest import started_bed

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=2, config=CONFIG)
    yield bed
    bed.close()


def test_peers_on_the_same_link_are_routed_directly(bed):
    a, b = bed.nodes
    routes = {r["dst"]: r for r in a.routes()}
    route = routes[str(b.subnet)]
    assert (route["gateway"], route["dev"]) == (str(b.underlay_ip), "eth0")
    assert "onlink" not in route.get("flags", [])
    assert a.neighbours() == [] and a.fdb() == []


def test_pods_reach_each_other_without_vxlan(bed):
    a, b = bed.nodes
    assert a.ping(b.pod_ip, count=2, interval=0.1).received == 2
    assert b.ping(a.pod_ip, count=2, interval=0.1).received == 2
