"""--ip-blackhole-route (upstream v0.27.1): a blackhole route for the node's own subnet, so that
traffic to pod addresses nobody holds is dropped at the node instead of leaving by its default
route. Node a has a default route via node c (a "router" that counts what reaches it); node b
sends to an unassigned address of a's subnet through the overlay. Without the route the packet
leaves a for c; with it, a drops it. The route comes back after deletion, loses to the CNI
bridge's route (a pod is still reached), and is removed when the option is off."""

import re
import time

import pytest

from testbed import netns
from testbed.bed import TestBed

from .conftest import FAST_RECONCILE, eventually, require_testbed

BLACKHOLE_METRIC = 4294967295


@pytest.fixture(scope="module")
def bed():
    require_testbed()
    with TestBed(hosts=3) as bed:
        bed.put_config()
        a, b, c = bed.nodes
        for node in (a, b):
            node.start(*FAST_RECONCILE)
        for node in (a, b):
            node.wait_ready()
        eventually(lambda: _assert(b.has_route(str(a.subnet))), timeout=10)
        netns.sysctl(a.ns, "net.ipv4.ip_forward", "1")
        a.run("ip", "route", "add", "default", "via", str(c.underlay_ip))
        yield bed


def _unassigned(node) -> str:
    return str(node.subnet.network_address + 77)


def _reaching_c(bed) -> int:
    """Packets to a's unassigned address that reached c (a's default gateway)."""
    a, _, c = bed.nodes
    out = c.run("iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-n", "-x").stdout
    for line in out.splitlines():
        if _unassigned(a) in line:
            return int(line.split()[0])
    return 0


def _send(b, dst: str) -> int:
    """Echo replies b gets for 3 pings from its host to ``dst`` through the overlay."""
    return b.ping(dst, count=3, interval=0.2, wait=1, from_pod=False).received


def _blackhole(node) -> list[dict]:
    return [
        r
        for r in node.ip_json("route", "show", "type", "blackhole", "proto", "152")
        if r["dst"] == str(node.subnet)
    ]


def _restart(node, *args: str) -> None:
    node.stop()
    node.start(*FAST_RECONCILE, *args)
    node.wait_ready()


def test_without_the_route_traffic_to_an_unassigned_pod_address_leaves_by_the_default_route(
    bed,
):
    a, b, c = bed.nodes
    c.run("iptables", "-w", "-t", "raw", "-I", "PREROUTING", "-d", _unassigned(a))
    assert not _blackhole(a)
    assert _send(b, _unassigned(a)) == 0
    eventually(lambda: _assert(_reaching_c(bed) >= 1), timeout=5)


def test_with_the_route_it_is_dropped_at_the_node(bed):
    a, b, _ = bed.nodes
    _restart(a, "--ip-blackhole-route")
    (route,) = _blackhole(a)
    assert route.get("metric") == BLACKHOLE_METRIC, route
    # (`ip route get` of a blackholed address answers EINVAL: the traffic itself shows it)
    before, arrived = _reaching_c(bed), _received(a)
    assert _send(b, _unassigned(a)) == 0
    time.sleep(0.5)
    assert _received(a) >= arrived + 3  # they reached a through the overlay
    assert _reaching_c(bed) == before  # and went no further


def _received(node) -> int:
    (link,) = node.ip_json("-s", "link", "show", "flannel.1")
    return link["stats64"]["rx"]["packets"]


def test_the_route_comes_back_after_deletion(bed):
    a = bed.nodes[0]
    route = ["blackhole", str(a.subnet), "proto", "152", "metric", str(BLACKHOLE_METRIC)]
    mark = len(a.log())
    # `ip route del` fails unless it deleted the route; the daemon repairs it within
    # milliseconds, so that it is gone cannot be looked at afterwards: its log says it put it back
    a.run("ip", "route", "del", *route)
    repaired = rf"kernel state repaired: .*route {a.subnet}\b"  # (logged after the repair)
    eventually(lambda: _assert(_blackhole(a) and re.search(repaired, a.log()[mark:])), timeout=5)


def test_a_pod_behind_the_bridge_is_still_reached(bed):
    a, b, _ = bed.nodes
    a.add_pod()
    assert b.ping(a.pod_ip, count=3, interval=0.1, from_pod=False).lost == 0
    assert _blackhole(a), "the bridge's route did not replace the blackhole route"


def test_the_route_is_removed_when_the_option_is_off(bed):
    a = bed.nodes[0]
    _restart(a)
    assert not _blackhole(a)
    assert "blackhole" not in a.run("ip", "route", "show", "proto", "152").stdout


def _assert(condition, detail="") -> None:
    assert condition, detail
