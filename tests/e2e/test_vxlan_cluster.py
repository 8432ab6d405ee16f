"""Three real daemons on a namespace test bed with a real etcd: the VXLAN overlay works,
is flannel-compatible on the wire and in etcd, survives restarts, and reconciles the kernel."""

import json
import re
import signal
from ipaddress import IPv4Network

import pytest

from testbed.capture import finish_capture, start_capture

from .conftest import eventually, started_bed

LEASE_VALUE = re.compile(
    r'^\{"PublicIP":"198\.51\.100\.\d","PublicIPv6":null,"BackendType":"vxlan",'
    r'"BackendData":\{"VNI":1,"VtepMAC":"([0-9a-f]{2}:){5}[0-9a-f]{2}"(,"UDPPort":8285)?\}\}$'
)


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=3)
    yield bed
    bed.close()


def peers_of(node, bed):
    return [n for n in bed.nodes if n is not node]


def expected_entries(bed, node):
    """What ``node`` must have programmed for the other nodes, read from their leases."""
    leases = {k.rsplit("/", 1)[1]: json.loads(v) for k, v in bed.leases().items()}
    want = set()
    for other in peers_of(node, bed):
        subnet = other.subnet
        value = leases[f"{subnet.network_address}-{subnet.prefixlen}"]
        want.add(
            (
                str(subnet),
                str(subnet.network_address),
                value["BackendData"]["VtepMAC"],
                value["PublicIP"],
            )
        )
    return want


def programmed_entries(node):
    routes = {r["dst"]: r for r in node.routes()}
    neigh = {n["dst"]: n["lladdr"] for n in node.neighbours()}
    fdb = {e["mac"]: e["dst"] for e in node.fdb()}
    have = set()
    for dst, r in routes.items():
        gw = r.get("gateway")
        mac = neigh.get(gw)
        if r.get("dev") == "flannel.1" and "onlink" in r.get("flags", []) and mac:
            have.add((dst, gw, mac, fdb.get(mac)))
    return have


def test_every_pod_reaches_every_other_pod(bed):
    for src in bed.nodes:
        for dst in peers_of(src, bed):
            result = src.ping(dst.pod_ip, count=3, interval=0.1)
            assert result.received == 3, f"{src.ns} -> {dst.pod_ip}:\n{result.output}"


def test_each_node_leased_a_distinct_subnet_of_the_network(bed):
    subnets = [node.subnet for node in bed.nodes]
    assert len(set(subnets)) == 3
    assert all(s.subnet_of(IPv4Network("10.1.0.0/16")) and s.prefixlen == 24 for s in subnets)


def test_leases_in_etcd_are_byte_compatible_with_upstream(bed):
    leases = bed.leases()
    assert len(leases) == 3
    for key, value in leases.items():
        assert re.fullmatch(r"/coreos\.com/network/subnets/10\.1\.\d{1,3}\.0-24", key)
        assert LEASE_VALUE.match(value), value
    # Attached to an etcd lease with a ~24 h TTL.
    lease_ids = bed.etcd.ctl("lease", "list").stdout.split()[3:]
    ttls = [bed.etcd.ctl("lease", "timetolive", lid).stdout for lid in lease_ids]
    assert any(re.search(r"remaining\((86[0-3]\d\d|8[0-5]\d\d\d)s\)", t) for t in ttls), ttls


def test_subnet_env_has_upstreams_format(bed):
    node = bed.nodes[0]
    text = node.subnet_file.read_text()
    sn = node.subnet
    assert text == (
        f"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={sn.network_address + 1}/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )


def test_vxlan_device_is_configured_like_upstreams(bed):
    for node in bed.nodes:
        (link,) = node.ip_json("-d", "link", "show", "flannel.1")
        info = link["linkinfo"]["info_data"]
        assert link["mtu"] == 1450
        assert info["id"] == 1 and info["port"] == 8472 and info["learning"] is False
        assert info["local"] == str(node.underlay_ip) and info["link"] == "eth0"
        addrs = node.ip_json("-4", "addr", "show", "flannel.1")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [
            (str(node.subnet.network_address), 32)
        ]
        assert node.run("cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() == "0"


def test_each_peer_has_neighbour_fdb_and_onlink_route(bed):
    for node in bed.nodes:
        eventually(lambda node=node: _assert_programmed(bed, node))
        assert all(
            r["protocol"] == "152" for r in node.ip_json("route", "show", "dev", "flannel.1")
        )


def _assert_programmed(bed, node):
    assert programmed_entries(node) == expected_entries(bed, node)


def test_a_dont_fragment_ping_of_exactly_the_mtu_passes_and_one_more_byte_does_not(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    payload = 1450 - 28  # IPv4 + ICMP headers
    assert a.ping(b.pod_ip, count=2, interval=0.1, size=payload, dont_fragment=True).received == 2
    too_big = a.ping(b.pod_ip, count=1, size=payload + 1, dont_fragment=True)
    assert too_big.received == 0 and re.search(r"mtu ?= ?1450", too_big.output)


def test_underlay_packets_are_vxlan_vni_1_on_udp_8472(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    capture = start_capture(bed.lan, f"v{a.index}", seconds=2.0)  # a switch port
    a.ping(b.pod_ip, count=3, interval=0.1)
    packets = finish_capture(capture)
    tunnelled = [
        p
        for p in packets
        if p.get("inner_src") == str(a.pod_ip) and p.get("inner_dst") == str(b.pod_ip)
    ]
    assert len(tunnelled) >= 3, packets
    for p in tunnelled:
        assert (p["src"], p["dst"], p["dport"], p["vni"]) == (
            str(a.underlay_ip),
            str(b.underlay_ip),
            8472,
            1,
        )
        assert p["inner_proto"] == 1  # ICMP


def test_deleted_kernel_entries_are_repaired(bed):
    node, peer = bed.nodes[0], bed.nodes[1]
    sn = peer.subnet
    mac = {n["dst"]: n["lladdr"] for n in node.neighbours()}[str(sn.network_address)]
    node.run("ip", "route", "del", str(sn), "proto", "152")
    node.run("ip", "neigh", "del", str(sn.network_address), "dev", "flannel.1")
    node.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", str(peer.underlay_ip))
    assert node.ping(peer.pod_ip, count=1).received == 0
    eventually(lambda: _assert_programmed(bed, node), timeout=10)
    assert node.ping(peer.pod_ip, count=2, interval=0.1).received == 2
    assert "kernel state repaired" in node.log()


def test_routes_we_do_not_own_are_left_alone(bed):
    node = bed.nodes[0]
    node.run(
        "ip", "route", "add", "10.1.250.0/24", "via", "10.1.250.0", "dev", "flannel.1", "onlink"
    )
    node.run("ip", "route", "add", "10.1.251.0/24", "via", "198.51.100.254", "proto", "static")
    try:
        mark = len(node.log())
        passes = node.status()["backend"]["reconcile_passes"]
        eventually(lambda: _passes_since(node, passes, 2), timeout=15)  # two full passes
        dsts = [r["dst"] for r in node.ip_json("route", "show")]
        assert "10.1.250.0/24" in dsts and "10.1.251.0/24" in dsts
        assert "10.1.250.0" not in node.log()[mark:]
    finally:
        node.run("ip", "route", "del", "10.1.250.0/24")
        node.run("ip", "route", "del", "10.1.251.0/24")


def test_a_restart_keeps_subnet_device_and_traffic(bed):
    node, other = bed.nodes[0], bed.nodes[1]
    subnet, mac = node.subnet, node.ip_json("link", "show", "flannel.1")[0]["address"]
    ping = other.start_ping(node.pod_ip, interval=0.02, count=200)  # 4 s of traffic
    assert node.stop(signal.SIGTERM) == 0
    assert node.ip_json("link", "show", "flannel.1")  # the data plane stays in place
    node.start("--reconcile-interval=2")
    node.wait_ready()
    result = other.finish_ping(ping)
    assert result.sent == 200 and result.lost == 0, result.output[-500:]
    assert node.subnet == subnet
    assert node.ip_json("link", "show", "flannel.1")[0]["address"] == mac
    assert "keeping existing device flannel.1" in node.log()
    assert re.search(rf"Found lease {subnet} for current IP", node.log())


def test_a_stopped_node_whose_lease_is_deleted_vanishes_from_its_peers(bed):
    gone, watchers = bed.nodes[2], bed.nodes[:2]
    subnet = gone.subnet
    try:
        assert gone.stop() == 0
        bed.etcd.ctl("del", f"/coreos.com/network/subnets/{subnet.network_address}-24")
        for node in watchers:
            eventually(lambda node=node: _assert_absent(node, gone, subnet), timeout=10)
    finally:
        gone.start("--reconcile-interval=2")
        gone.wait_ready()
        gone.add_pod()


def _assert_absent(node, gone, subnet):
    assert str(subnet) not in [r["dst"] for r in node.routes()]
    assert str(subnet.network_address) not in [n["dst"] for n in node.neighbours()]
    assert str(gone.underlay_ip) not in [e["dst"] for e in node.fdb()]


def test_entries_of_a_peer_that_vanished_while_we_were_down_are_removed_at_start(bed):
    node, gone = bed.nodes[0], bed.nodes[2]
    subnet = gone.subnet
    assert node.stop() == 0
    try:
        assert gone.stop() == 0
        bed.etcd.ctl("del", f"/coreos.com/network/subnets/{subnet.network_address}-24")
        assert str(subnet) in [r["dst"] for r in node.routes()]  # stale while node is down
        node.start("--reconcile-interval=2")
        node.wait_ready()
        eventually(lambda: _assert_absent(node, gone, subnet), timeout=10)
    finally:
        if not node.running:
            node.start("--reconcile-interval=2")
            node.wait_ready()
        gone.start("--reconcile-interval=2")
        gone.wait_ready()
        gone.add_pod()
    eventually(lambda: _assert_programmed(bed, node), timeout=10)


def _passes_since(node, before: int, more: int) -> None:
    assert node.status()["backend"]["reconcile_passes"] >= before + more
