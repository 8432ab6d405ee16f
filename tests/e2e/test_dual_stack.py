"""Dual-stack networks (EnableIPv6) on the bed, mixed with upstream flanneld v0.20.2: two
pyflannel nodes and one upstream node per backend (vxlan, host-gw), every pair over both
families both ways; upstream's lease and subnet.env shapes; one pod MTU that carries full-size
packets of both families (a DF ping at exactly the MTU); ip6tables rules; repair of IPv6
entries; a peer whose IPv6 half is junk; bad configurations; and a node migrating from
upstream to pyflannel keeping both subnets. The fourth host runs the failure cases."""

import json
import re
import shutil
import time
from ipaddress import IPv6Address, IPv6Network

import pytest

from testbed.upstream import start_upstream
from tests.conftest import require

from .conftest import FAST_RECONCILE, eventually, require_upstream

NETWORK6 = "fd10::/48"


def config(backend: str) -> dict:
    return {
        "Network": "10.1.0.0/16",
        "EnableIPv6": True,
        "IPv6Network": NETWORK6,
        "Backend": {"Type": backend},
    }


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def bed(request):
    from testbed.bed import TestBed

    require_upstream()
    with TestBed(hosts=4) as bed:
        bed.put_config(config(request.param))
        for node in bed.nodes[:2]:
            node.start(*FAST_RECONCILE, "--ip-masq", "--probe-interval=1")
        for node in bed.nodes[:2]:
            node.wait_ready()
            node.add_pod()
        start_upstream(bed.nodes[2], "--ip-masq")
        bed.nodes[2].add_pod()
        bed.backend = request.param
        yield bed


def _reaches(a, dst):
    assert a.ping(dst, count=1, wait=1).received == 1


PAIRS = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]


@pytest.mark.parametrize("src, dst", PAIRS)
def test_every_pair_reaches_each_other_over_both_families(bed, src, dst):
    a, b = bed.nodes[src], bed.nodes[dst]
    for address in (b.pod_ip, b.pod_ip6):
        eventually(lambda address=address: _reaches(a, address), timeout=20)
        assert a.ping(address, count=3, interval=0.1).lost == 0, (a.ns, address)


def test_the_lease_and_subnet_env_have_upstreams_shape(bed):
    a, up = bed.nodes[0], bed.nodes[2]
    leases = bed.leases()
    mine = leases[f"/coreos.com/network/subnets/{a.subnet.network_address}-24&{_key6(a)}"]
    theirs = leases[f"/coreos.com/network/subnets/{up.subnet.network_address}-24&{_key6(up)}"]
    if bed.backend == "vxlan":
        mac = a.ip_json("link", "show", "flannel.1")[0]["address"]
        mac6 = a.ip_json("link", "show", "flannel-v6.1")[0]["address"]
        assert mine == (
            f'{{"PublicIP":"{a.underlay_ip}","PublicIPv6":"{a.underlay_ip6}",'
            f'"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},'
            f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'
        )
    else:
        assert mine == (
            f'{{"PublicIP":"{a.underlay_ip}","PublicIPv6":"{a.underlay_ip6}",'
            '"BackendType":"host-gw"}'
        )
    assert list(json.loads(mine)) == list(json.loads(theirs))  # same keys, same order
    keys = [line.split("=")[0] for line in a.subnet_file.read_text().splitlines()]
    up_keys = [line.split("=")[0] for line in up.subnet_file.read_text().splitlines()]
    assert (
        keys
        == up_keys
        == [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ",
        ]
    )
    env = a.subnet_env()
    assert env["FLANNEL_IPV6_NETWORK"] == NETWORK6
    assert env["FLANNEL_IPV6_SUBNET"] == f"{a.subnet6.network_address + 1}/64"


def _key6(node) -> str:
    return f"{node.subnet6.network_address}-64"


def test_one_pod_mtu_carries_full_size_packets_of_both_families(bed):
    """VXLAN over IPv6 costs 70 bytes: pyflannel's pods get 1430 so that a DF ping of exactly
    the MTU passes over each family (upstream writes 1450, and its full-size IPv6 pod
    packets are refused with Packet Too Big: its bug, shown here)."""
    a, b, up = bed.nodes[:3]
    want = 1430 if bed.backend == "vxlan" else 1500
    assert a.mtu == want
    v4 = a.ping(b.pod_ip, size=a.mtu - 28, dont_fragment=True, count=2, interval=0.1)
    v6 = a.ping(b.pod_ip6, size=a.mtu - 48, dont_fragment=True, count=2, interval=0.1)
    assert v4.lost == 0 and v6.lost == 0, (v4.output, v6.output)
    if bed.backend == "vxlan":
        assert up.mtu == 1450
        big = up.ping(a.pod_ip6, size=up.mtu - 48, dont_fragment=True, count=1)
        assert big.received == 0 and "too big" in big.output.lower()


def test_ip6tables_rules_as_upstream(bed):
    a = bed.nodes[0]
    nat = a.run("ip6tables", "-w", "-t", "nat", "-S").stdout
    c = '-m comment --comment "flanneld masq"'
    for line in (
        f"-A FLANNEL-POSTRTG -s {a.subnet6} -d {NETWORK6} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {NETWORK6} ! -d ff00::/8 {c} -j MASQUERADE --random-fully",
    ):
        assert line in nat.splitlines(), nat
    forward = a.run("ip6tables", "-w", "-S", "FLANNEL-FWD").stdout
    assert f'-A FLANNEL-FWD -s {NETWORK6} -m comment --comment "flanneld forward" -j ACCEPT' in (
        forward
    )


def test_deleted_ipv6_entries_are_repaired(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    a.run("ip", "-6", "route", "del", str(b.subnet6))
    if bed.backend == "vxlan":
        a.run("ip", "-6", "neigh", "del", str(b.subnet6.network_address), "dev", "flannel-v6.1")
    eventually(lambda: _has_route6(a, b), timeout=10)
    assert a.ping(b.pod_ip6, count=2, interval=0.1).lost == 0


def _has_route6(a, b):
    routes = {r["dst"]: r for r in a.ip_json("-6", "route", "show", "proto", "152")}
    assert str(b.subnet6) in routes
    if routes[str(b.subnet6)].get("dev") == "flannel-v6.1":
        neighbours = {n["dst"] for n in a.neighbours("flannel-v6.1")}
        assert str(b.subnet6.network_address) in neighbours


def test_status_and_metrics_show_both_families(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    doc = a.status()
    assert doc["lease"]["ipv6_subnet"] == str(a.subnet6) and doc["network6"] == NETWORK6
    rows = {r["subnet"]: r for r in doc["peers"]}
    v6 = rows[str(b.subnet)]["ipv6"]
    assert v6["subnet"] == str(b.subnet6) and v6["route"] is True
    assert v6["public_ip"] == str(b.underlay_ip6)
    text = a.status_cli().stdout
    assert f"IPv6 {a.subnet6}" in text and str(b.subnet6) in text
    metrics = a.endpoint("/metrics")
    assert 'pyflannel_peer_families{family="ipv6"} 2.0' in metrics
    _, findings = a.doctor()
    assert findings["ipv6"]["status"] == "pass", findings["ipv6"]
    assert f"dual-stack on eth0 ({a.underlay_ip6})" in findings["ipv6"]["detail"]


def test_each_family_is_probed_and_a_path_broken_in_ipv6_only_is_named(bed):
    a, b, up = bed.nodes[:3]
    for peer in (a, up):
        eventually(lambda peer=peer: _paths(b, peer, "ok", "ok"), timeout=20)
    drop = ["OUTPUT", "-d", str(a.subnet6), "-j", "DROP"]
    b.run("ip6tables", "-w", "-I", *drop)
    try:
        eventually(lambda: _paths(b, a, "ok", "unreachable"), timeout=20)
        proc = b.status_cli()
        assert proc.returncode == 1 and str(a.subnet6) in proc.stdout, proc.stdout
        code, findings = b.doctor("--probe", str(a.subnet))
        assert code == 1
        assert findings[f"path {a.subnet}"]["status"] == "pass"
        assert findings[f"path {a.subnet6}"]["status"] == "fail"
    finally:
        b.run("ip6tables", "-w", "-D", *drop)
    eventually(lambda: _paths(b, a, "ok", "ok"), timeout=20)


def _paths(node, peer, v4: str, v6: str):
    row = {r["subnet"]: r for r in node.status()["peers"]}[str(peer.subnet)]
    assert ((row["path"] or {}).get("state"), (row["ipv6"].get("path") or {}).get("state")) == (
        v4,
        v6,
    )


def test_a_peer_whose_ipv6_half_is_junk_keeps_its_ipv4_half(bed):
    """A lease whose IPv6 subnet lies outside the network: the IPv4 route is programmed, the
    IPv6 one not, and status says why; nothing else is lost."""
    a, b = bed.nodes[0], bed.nodes[1]
    value = {"PublicIP": "198.51.100.9", "PublicIPv6": "fd00:198:51:100::9"}
    value["BackendType"] = bed.backend
    if bed.backend == "vxlan":
        value["BackendData"] = {"VNI": 1, "VtepMAC": "02:00:00:00:00:09"}
        value["BackendV6Data"] = {"VNI": 1, "VtepMAC": "02:00:00:00:00:0a"}
    key = "/coreos.com/network/subnets/10.1.250.0-24&fd99::-64"
    bed.etcd.put(key, json.dumps(value))
    try:
        eventually(lambda: _junk_seen(a), timeout=10)
        assert "fd99::/64" not in {r["dst"] for r in a.ip_json("-6", "route", "show")}
        assert a.ping(b.pod_ip6, count=2, interval=0.1).lost == 0
        assert "IPv6 not programmed" in a.status_cli().stdout
    finally:
        bed.etcd.ctl("del", key)


def _junk_seen(a):
    rows = {r["subnet"]: r for r in a.status()["peers"]}
    row = rows.get("10.1.250.0/24")
    assert row is not None and row["route"] is True
    assert "not a subnet of the network" in row["ipv6"]["problem"]


def test_bad_configurations_are_refused_with_a_clear_error(bed):
    spare = bed.nodes[3]
    for prefix, cfg, words in (
        ("/udp6/network", {**config("udp"), "Backend": {"Type": "udp"}}, "carries IPv4 only"),
        (
            "/v6only/network",
            {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": NETWORK6},
            "IPv6-only networks are not supported",
        ),
        (
            "/badv6/network",
            {**config(bed.backend), "IPv6Network": "fd10::/48", "IPv6SubnetLen": 127},
            "SubnetLen must be less than /127",
        ),
    ):
        bed.put_config(cfg, prefix=prefix)
        mark = len(spare.log())
        spare.start(f"--etcd-prefix={prefix}", "--healthz-port=0")
        if "SubnetLen" in words:  # a bad config is waited for (it may be fixed in etcd)
            spare.wait_log(re.escape(words), timeout=15, after=mark)
            spare.stop()
        else:
            assert spare.proc.wait(timeout=20) == 1
            assert words in spare.log()[mark:], spare.log()[mark:]
            spare.proc = None


def test_nftables_mode_keeps_upstreams_ip6_table(bed):
    """EnableNFTables on a dual-stack network: ``ip6 flannel-ipv6`` with the IPv6 rules, and
    no drift found at each resync (the rules are written as nft prints them)."""
    require(shutil.which("nft") is not None, "the nft command (apt install nftables)")
    spare = bed.nodes[3]
    bed.put_config({**config(bed.backend), "EnableNFTables": True}, prefix="/nft6/network")
    spare.start("--etcd-prefix=/nft6/network", "--ip-masq", "--iptables-resync=1")
    try:
        spare.wait_ready()
        subnet6 = spare.subnet6
        text = spare.run("nft", "list", "table", "ip6", "flannel-ipv6").stdout
        assert f"ip6 saddr {subnet6} ip6 daddr {NETWORK6} return" in text
        assert f"ip6 saddr {NETWORK6} ip6 daddr != ff00::/8 masquerade" in text
        assert f"ip6 saddr {NETWORK6} accept" in text
        time.sleep(2.5)  # two resyncs
        assert "drifted" not in spare.log()
    finally:
        spare.stop()
        spare.subnet_file.unlink(missing_ok=True)


def test_a_node_without_an_ipv6_address_says_so(bed):
    spare = bed.nodes[3]
    spare.run("ip", "-6", "addr", "del", f"{spare.underlay_ip6}/64", "dev", "eth0")
    try:
        mark = len(spare.log())
        spare.start("--healthz-port=0")
        assert spare.proc.wait(timeout=20) == 1
        assert "has no global IPv6 address" in spare.log()[mark:]
        spare.proc = None
    finally:
        spare.run("ip", "-6", "addr", "add", f"{spare.underlay_ip6}/64", "dev", "eth0", "nodad")


def test_a_node_migrating_from_upstream_to_pyflannel_keeps_both_subnets(bed):
    a, up = bed.nodes[0], bed.nodes[2]
    subnet, subnet6 = up.subnet, up.subnet6
    up.stop()  # v0.20.2 may panic on SIGTERM (its bug): only the exit is asked for
    time.sleep(0.2)
    up.start(*FAST_RECONCILE, "--ip-masq")
    up.wait_ready()
    assert (up.subnet, up.subnet6) == (subnet, subnet6)
    assert isinstance(up.subnet6, IPv6Network) and up.subnet6.subnet_of(IPv6Network(NETWORK6))
    for address in (up.pod_ip, up.pod_ip6):
        eventually(lambda address=address: _reaches(a, address), timeout=20)
    assert isinstance(up.pod_ip6, IPv6Address)
    eventually(lambda: _reaches(up, a.pod_ip6), timeout=20)
