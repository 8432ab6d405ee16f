"""Several networks on one host (one daemon per --etcd-prefix, each with its own subnet file),
as upstream documents and its functional suite does: they must never touch each other.

Every host runs three daemons: a vxlan network (VNI 1), a udp network, and a second vxlan
network (VNI 2 on port 8473), so both pairings of the operating-faults issue (vxlan + udp,
vxlan + vxlan) are live at once, all with --ip-masq (shared iptables chains) and fast
reconcile and resync periods (a fight would show within seconds).
"""

import json
import re
import time
from ipaddress import IPv4Network

import pytest

from tests.e2e.conftest import eventually, require_testbed

NETWORKS = {
    "": ("/coreos.com/network", {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}),
    "u": ("/net-udp", {"Network": "10.2.0.0/16", "Backend": {"Type": "udp"}}),
    "v": (
        "/net-vni2",
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2, "Port": 8473}},
    ),
}
ARGS = (
    "--reconcile-interval=2",
    "--iptables-resync=1",
    "--ip-masq",
    "--udp-workers=1",
    "--probe-interval=2",
)
IDLE = 10.0  # seconds


@pytest.fixture(scope="module")
def bed():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=2) as bed:
        networks = {"": bed.nodes}
        networks.update({tag: bed.second_network(tag) for tag in ("u", "v")})
        for prefix, config in NETWORKS.values():
            bed.put_config(config, prefix=prefix)
        # The udp network first: the vxlan networks then see that flannel0 is not theirs.
        for tag in ("u", "", "v"):
            for node in networks[tag]:
                node.start(*ARGS, f"--etcd-prefix={NETWORKS[tag][0]}")
            for node in networks[tag]:
                node.wait_ready()
                node.add_pod()
        bed.networks = networks
        yield bed


def all_nodes(bed):
    return [node for nodes in bed.networks.values() for node in nodes]


def test_every_network_reaches_across(bed):
    for tag, (a, b) in bed.networks.items():
        result = eventually(lambda a=a, b=b: _reaches(a, b), timeout=10)
        assert result.lost == 0, f"network {NETWORKS[tag][0]}: {result.output}"


def _reaches(a, b):
    result = a.ping(b.pod_ip, count=3)
    assert result.received == 3
    return result


def test_after_idle_nothing_was_repaired_and_no_rule_restored(bed):
    marks = {id(node): len(node.log()) for node in all_nodes(bed)}
    time.sleep(IDLE)
    for node in all_nodes(bed):
        new = node.log()[marks[id(node)] :]
        assert "kernel state repaired" not in new, f"{node.dir.name}: {new[-2000:]}"
        assert "iptables rules drifted" not in new, f"{node.dir.name}: {new[-2000:]}"
        status = node.status()
        assert status["iptables"]["present"] is True
        assert status["iptables"]["restores"] <= 1  # the one at start-up, if any
    for a, b in bed.networks.values():
        assert a.ping(b.pod_ip, count=3).lost == 0


def test_each_network_programs_only_its_own_routes_and_leaves_the_others(bed):
    h1 = [nodes[0] for nodes in bed.networks.values()]
    routes = {r["dst"] for r in h1[0].routes()}
    # All three networks' routes are in the kernel side by side, with one protocol number.
    b = {tag: nodes[1] for tag, nodes in bed.networks.items()}
    assert str(b[""].subnet) in routes and str(b["v"].subnet) in routes
    assert "10.2.0.0/16" in routes  # the udp network's route into flannel0
    for node in h1:
        network = IPv4Network(node.subnet_env()["FLANNEL_NETWORK"])
        peers = [IPv4Network(p["subnet"]) for p in node.status()["peers"]]
        assert peers and all(p.subnet_of(network) for p in peers)


def test_deleting_one_networks_route_repairs_only_in_that_network(bed):
    a = bed.networks["v"][0]
    b = bed.networks["v"][1]
    others = [n for n in all_nodes(bed) if n.index == a.index and n is not a]
    marks = {id(n): len(n.log()) for n in others}
    a.run("ip", "route", "del", str(b.subnet))
    eventually(lambda: _has_route(a, b.subnet), timeout=5)
    time.sleep(1)
    for node in others:
        assert "kernel state repaired" not in node.log()[marks[id(node)] :]


def _has_route(node, subnet):
    assert str(subnet) in {r["dst"] for r in node.routes()}


def test_each_instance_has_its_own_health_endpoint_and_status_finds_it(bed):
    h1 = [nodes[0] for nodes in bed.networks.values()]
    ports = {node.status()["instance"]["healthz"] for node in h1}
    assert len(ports) == 3
    moved = [n for n in h1 if not n.status()["instance"]["healthz"].endswith(":8471")]
    for node in moved:
        assert re.search(r"health endpoint on 127\.0\.0\.1:847\d instead of 8471", node.log())
        assert "in use (by pyflannel pid" in node.log()
    for tag, node in zip(bed.networks, h1, strict=True):
        prefix = NETWORKS[tag][0]
        proc = node.status_cli(f"--etcd-prefix={prefix}", "--json")
        doc = json.loads(proc.stdout)
        assert doc["instance"]["etcd_prefix"] == prefix
        assert doc["network"] == NETWORKS[tag][1]["Network"]
        assert len(doc["instance"]["others"]) == 2
        text = node.status_cli(f"--etcd-prefix={prefix}").stdout
        assert f"network    {prefix} (subnet file {node.subnet_file}" in text


def test_a_second_daemon_for_the_same_network_is_refused_naming_the_first(bed):
    from testbed.bed import Node

    first = bed.networks["u"][0]
    twin = Node(bed, first.index, network="twin")
    bed.extra_nodes.append(twin)
    twin.start(*ARGS, "--etcd-prefix=/net-udp")
    twin.proc.wait(20)
    assert twin.proc.returncode == 1
    assert f"another pyflannel already runs network /net-udp on this host (pid {first.pid}" in (
        twin.log()
    )
    assert first.running and first.ping(bed.networks["u"][1].pod_ip, count=2).lost == 0


def test_a_second_network_on_the_same_subnet_file_is_refused(bed):
    first = bed.networks[""][0]
    proc = first.run(
        *first.daemon_command("--etcd-prefix=/yet-another", "--healthz-port=0"),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert (
        f"subnet file {first.subnet_file} is in use by the daemon of another network "
        f"(pid {first.pid}, network /coreos.com/network" in proc.stderr
    )
    assert "give each network its own --subnet-file" in proc.stderr


def test_a_narrow_path_for_one_network_is_fixed_by_that_network_alone(bed):
    """VXLAN on port 8472 (the first network) loses packets over 1400 bytes between the two
    hosts; VNI 2 on 8473 and the udp network do not. The first network fixes its peer's path
    (route MTU, MSS clamp naming its peer's subnet); the others' routes and paths stay as
    they were, and on the mended path the fix goes."""
    from tests.e2e.test_path_mtu import OFFLOADS

    (a, b), (va, vb) = bed.networks[""], bed.networks["v"]
    drop = ["-p", "udp", "--dport", "8472", "-m", "length", "--length", "1401:65535", "-j", "DROP"]
    for node in (a, b):
        node.run("ethtool", "-K", "eth0", *(x for o in OFFLOADS for x in (o, "off")), check=False)
        node.run("iptables", "-I", "INPUT", *drop)
    try:
        eventually(lambda: _path(a, b).get("path_mtu") == 1350 or _fail(a, b), timeout=30)
        mangle = a.run("iptables", "-t", "mangle", "-S", "FLANNEL-MSS").stdout
        assert f"-d {b.subnet}" in mangle and "10.3." not in mangle and "10.2." not in mangle
        assert "mtu" in a.run("ip", "route", "show", str(b.subnet)).stdout
        assert "mtu" not in a.run("ip", "route", "show", str(vb.subnet)).stdout
        assert "path_mtu" not in _path(va, vb)
        assert va.ping(vb.pod_ip, count=2, size=1422, dont_fragment=True).received == 2
    finally:
        for node in (a, b):
            node.run("iptables", "-D", "INPUT", *drop)


def _path(node, peer) -> dict:
    return {r["subnet"]: r for r in node.status()["peers"]}[str(peer.subnet)]["path"] or {}


def _fail(node, peer):
    raise AssertionError(_path(node, peer))
