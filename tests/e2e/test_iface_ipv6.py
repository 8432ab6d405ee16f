"""The IPv6 address of a dual-stack node chosen by the flags (upstream #2081, open there: its
--iface-regex and --iface-can-reach choose the IPv4 address only). Node a has two interfaces
with global IPv6 addresses: eth0 (the bed's underlay) and eth1 (fd77::1, a veth of its own).
Without flags a advertises eth0's (upstream's choice); --iface-regex and --iface-can-reach
name eth1's, which is then advertised and holds flannel-v6.1; IPv4 stays on eth0."""

import json

import pytest

from testbed import netns

from .conftest import FAST_RECONCILE, require_testbed

CONFIG = {
    "Network": "10.1.0.0/16",
    "EnableIPv6": True,
    "IPv6Network": "fd10::/48",
    "Backend": {"Type": "vxlan"},
}
SECOND = "fd77::1"


@pytest.fixture(scope="module")
def node():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=1) as bed:
        bed.put_config(CONFIG)
        (node,) = bed.nodes
        node.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
        for link in ("eth1", "eth1p"):
            node.run("ip", "link", "set", link, "up")
        netns.ip(node.ns, "-6", "addr", "add", f"{SECOND}/64", "dev", "eth1", "nodad")
        node.bed = bed
        yield node
        node.stop()


def _started(node, *args: str) -> dict:
    if node.running:
        node.stop()
    node.start(*FAST_RECONCILE, *args)
    node.wait_ready()
    lease = json.loads(node.bed.leases()[_key(node)])
    return {"lease": lease, "status": node.status()}


def _key(node) -> str:
    return f"/coreos.com/network/subnets/{node.subnet.network_address}-24&{node.subnet6.network_address}-64"


def _vxlan6_link(node) -> dict:
    (link,) = node.ip_json("-d", "link", "show", "flannel-v6.1")
    return link["linkinfo"]["info_data"]


def test_without_flags_the_ipv4_interfaces_ipv6_address(node):
    got = _started(node)
    assert got["lease"]["PublicIPv6"] == str(node.underlay_ip6)
    assert got["status"]["interface"]["address6"] == str(node.underlay_ip6)


@pytest.mark.parametrize("flag", ["--iface-regex=^fd77:", f"--iface-can-reach={SECOND[:-1]}2"])
def test_a_flag_names_the_other_interfaces_address(node, flag):
    got = _started(node, flag)
    assert got["lease"]["PublicIPv6"] == SECOND
    assert got["lease"]["PublicIP"] == str(node.underlay_ip)  # IPv4 still eth0's
    interface = got["status"]["interface"]
    assert (interface["name"], interface["address6"]) == ("eth0", SECOND)
    vxlan6 = _vxlan6_link(node)
    assert vxlan6["local6"] == SECOND and vxlan6["link"] == "eth1", vxlan6
    node.wait_log(rf"using interface eth0 .*{SECOND} on eth1")
