"""The wireguard backend on the bed through userspace WireGuard (this kernel has no module):
Debian's wireguard-go supervised by pyflannel, configured over its UAPI socket. Three nodes
reach every pair; the lease is upstream's bytes with the key file's public key (as `wg pubkey`
computes it); the underlay carries only WireGuard messages; `wg set` undone; strangers'
datagrams change nothing; junk peer keys refused; a killed wireguard-go restarted; a restart
keeps key, subnet and peers; a rotated key converges; missing wireguard-go named."""

import json
import os
import re
import socket
import stat
import subprocess
import time

import pytest

from testbed.capture import finish_capture, start_capture
from testbed.iperf import iperf, received_bits_per_second

from .conftest import eventually, require_wireguard_go, start_nodes

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard"}}
ARGS = ("--reconcile-interval=2", "--probe-interval=1")


@pytest.fixture(scope="module")
def bed():
    from testbed.bed import TestBed

    require_wireguard_go()
    with TestBed(hosts=4) as bed:
        bed.put_config(CONFIG)
        start_nodes(bed.nodes[:3], ARGS, private_run=True)
        yield bed


def wg_dump(node) -> dict[str, dict]:
    """`wg show flannel-wg dump` in the node's daemon's namespaces: peers by public key."""
    lines = node.in_daemon_mounts("wg", "show", "flannel-wg", "dump").stdout.splitlines()
    peers = {}
    for line in lines[1:]:
        key, _psk, endpoint, allowed, handshake, *_ = line.split("\t")
        peers[key] = {"endpoint": endpoint, "allowed_ips": allowed, "handshake": int(handshake)}
    return peers


def public_key(node) -> str:
    lease = json.loads(
        node.bed.leases()[f"/coreos.com/network/subnets/{node.subnet.network_address}-24"]
    )
    return lease["BackendData"]["PublicKey"]


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


@pytest.mark.parametrize("src, dst", [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)])
def test_every_pair_reaches_each_other(bed, src, dst):
    a, b = bed.nodes[src], bed.nodes[dst]
    eventually(lambda: _reaches(a, b), timeout=10)
    assert a.ping(b.pod_ip, count=3, interval=0.1).lost == 0


def test_the_lease_is_upstreams_with_the_key_files_public_key(bed):
    a = bed.nodes[0]
    pub = subprocess.run(
        ["wg", "pubkey"], input=a.key_file.read_text(), capture_output=True, text=True, check=True
    ).stdout.strip()
    value = bed.leases()[f"/coreos.com/network/subnets/{a.subnet.network_address}-24"]
    assert value == (
        '{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{pub}"}}}}'
    )
    assert stat.S_IMODE(a.key_file.stat().st_mode) == 0o600
    assert a.key_file.read_text().strip() not in a.log()  # the private key is never logged
    assert a.mtu == 1420
    doc = a.status()
    assert doc["backend"]["public_key"] == pub
    assert "userspace (wireguard-go" in doc["backend"]["datapath"]


def test_each_peer_is_a_wireguard_peer_with_its_subnet(bed):
    a = bed.nodes[0]
    peers = wg_dump(a)
    for peer in bed.nodes[1:3]:
        got = peers[public_key(peer)]
        assert got["endpoint"] == f"{peer.underlay_ip}:51820"
        assert got["allowed_ips"] == str(peer.subnet)
    assert len(peers) == 2
    routes = {r["dst"]: r for r in a.routes()}
    assert routes["10.1.0.0/16"]["dev"] == "flannel-wg"  # one route for the network


def test_only_wireguard_messages_cross_the_underlay(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    capture = start_capture(b.ns, "eth0", 3)
    a.ping(b.pod_ip, count=5, interval=0.1, size=200)
    records = [
        r
        for r in finish_capture(capture)
        if {r["src"], r["dst"]} == {"198.51.100.1", "198.51.100.2"}
    ]
    assert records, "nothing captured"
    pods = [socket.inet_aton(str(ip)).hex() for ip in (a.pod_ip, b.pod_ip)]
    for r in records:
        assert 51820 in (r["sport"], r["dport"]), r
        payload = r["payload_hex"]
        assert int(payload[:2], 16) in (1, 2, 3, 4) and payload[2:8] == "000000", payload[:16]
        assert not any(ip in payload for ip in pods), "a pod address in clear on the wire"
    assert any(len(r["payload_hex"]) // 2 > 200 for r in records)  # the pings themselves


def test_iperf3_between_pods(bed):
    """TCP flows through the tunnel (how fast is measured in bench/dataplane.py)."""
    a, b = bed.nodes[0], bed.nodes[1]
    result = iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds=2)
    assert received_bits_per_second(result) > 0, result
    assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]


def test_someones_wg_set_is_undone(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    key = public_key(b)
    a.in_daemon_mounts("wg", "set", "flannel-wg", "peer", key, "remove")
    eventually(lambda: _has_peer(a, b, key), timeout=10)
    a.in_daemon_mounts("wg", "set", "flannel-wg", "peer", key, "allowed-ips", "10.9.0.0/16")
    eventually(lambda: _has_peer(a, b, key), timeout=10)
    assert a.ping(b.pod_ip, count=2, interval=0.1).lost == 0


def _has_peer(a, b, key):
    peer = wg_dump(a).get(key)
    assert peer is not None and peer["allowed_ips"] == str(b.subnet)


def test_strangers_datagrams_change_nothing(bed):
    """From the switch's namespace (not a node): junk, and a forged handshake initiation of
    the right size and type. WireGuard's own handshake rejects them."""
    a, b = bed.nodes[0], bed.nodes[1]
    before = {k: v["endpoint"] for k, v in wg_dump(a).items()}
    script = (
        "import os, socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(200):\n"
        "    s.sendto(os.urandom(i % 300 + 1), ('198.51.100.1', 51820))\n"
        "    s.sendto(struct.pack('<I', 1) + os.urandom(144), ('198.51.100.1', 51820))\n"
        "    s.sendto(struct.pack('<I', 4) + os.urandom(60), ('198.51.100.1', 51820))\n"
    )
    subprocess.run(["ip", "netns", "exec", bed.lan, "python3", "-c", script], check=True)
    time.sleep(0.5)
    assert {k: v["endpoint"] for k, v in wg_dump(a).items()} == before
    assert a.ping(b.pod_ip, count=3, interval=0.1).lost == 0
    assert a.status()["daemon"]["ready"]


def test_junk_peer_keys_are_refused_with_their_reason(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    junk = {
        "10.1.251.0-24": "not-a-key",
        "10.1.252.0-24": public_key(a),  # a's own key
        "10.1.253.0-24": public_key(b),  # b's key again: two subnets, one key
    }
    for key, pub in junk.items():
        value = {
            "PublicIP": "198.51.100.9",
            "BackendType": "wireguard",
            "BackendData": {"PublicKey": pub},
        }
        bed.etcd.put(f"/coreos.com/network/subnets/{key}", json.dumps(value))
    try:
        eventually(lambda: _ignored(a, 3), timeout=10)
        ignored = " ".join(a.status()["ignored"])
        assert "malformed" in ignored and "own public key" in ignored
        assert "also the key of" in ignored
        assert set(wg_dump(a)) == {public_key(b), public_key(bed.nodes[2])}
        assert a.ping(b.pod_ip, count=2, interval=0.1).lost == 0
    finally:
        for key in junk:
            bed.etcd.ctl("del", f"/coreos.com/network/subnets/{key}")


def _ignored(node, n):
    assert len([r for r in node.status()["ignored"] if r.startswith("10.1.25")]) == n


def test_a_killed_wireguard_go_is_restarted(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    (pid,) = [p for p in a.all_children() if "wireguard-go" in open(f"/proc/{p}/cmdline").read()]
    mark = len(a.log())
    os.kill(pid, 9)
    a.wait_log("wireguard-go had exited", timeout=10, after=mark)
    eventually(lambda: _reaches(a, b), timeout=10)
    eventually(lambda: _reaches(b, a), timeout=10)


def test_a_restart_keeps_key_subnet_and_peers(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    key, subnet = public_key(a), a.subnet
    a.stop()
    a.start(*ARGS, private_run=True)
    a.wait_ready()
    assert (public_key(a), a.subnet) == (key, subnet)
    eventually(lambda: _reaches(b, a), timeout=10)
    assert len(wg_dump(a)) == 2


def test_a_rotated_key_is_readvertised_and_peers_follow(bed):
    a, c = bed.nodes[0], bed.nodes[2]
    old = public_key(c)
    c.stop()
    c.key_file.unlink()
    c.start(*ARGS, private_run=True)
    c.wait_ready()
    new = public_key(c)
    assert new != old
    eventually(lambda: _rotated(a, old, new), timeout=10)
    eventually(lambda: _reaches(a, c), timeout=10)
    eventually(lambda: _reaches(c, a), timeout=10)


def _rotated(a, old, new):
    peers = wg_dump(a)
    assert new in peers and old not in peers


def test_without_wireguard_go_or_kernel_module_the_error_says_what_to_install(bed):
    spare = bed.nodes[3]
    for args, env, words in (
        (
            ("--wireguard-datapath=userspace",),
            {"PYFLANNEL_WIREGUARD_GO": "/nonexistent"},
            "apt install wireguard-go",
        ),
        (
            ("--wireguard-datapath=kernel",),
            {},
            "cannot create WireGuard device flannel-wg in the kernel",
        ),
    ):
        mark = len(spare.log())
        spare.start("--healthz-port=0", *args, env=env, private_run=True)
        assert spare.proc.wait(timeout=20) == 1
        assert words in spare.log()[mark:], spare.log()[mark:]
        spare.proc = None


def test_doctor_says_which_wireguard_this_node_can_run(bed):
    _, findings = bed.nodes[3].doctor()
    finding = findings["wireguard"]
    assert (
        finding["status"] == "pass"
        and "userspace WireGuard: /usr/bin/wireguard-go" in finding["detail"]
    )
    assert re.search(r"no kernel WireGuard \(.+\)", finding["detail"])


DUAL = {**CONFIG, "EnableIPv6": True, "IPv6Network": "fd10::/48"}


def _two_dual_stack_nodes(config: dict):
    """Two nodes with pods on a dual-stack wireguard network (a bed of their own)."""
    from testbed.bed import TestBed

    with TestBed(hosts=2) as dual:
        dual.put_config(config)
        start_nodes(dual.nodes, ARGS, private_run=True)
        yield dual


def _both_families_reach_both_ways(dual, timeout: float) -> None:
    a, b = dual.nodes
    for src, dst in ((a, b), (b, a)):
        for address in (dst.pod_ip, dst.pod_ip6):
            eventually(lambda s=src, d=address: _reaches_ip(s, d), timeout=timeout)


def _assert_dual_stack_lease_is_upstreams(dual, node) -> None:
    """Upstream's bytes: the public key under both families."""
    subnets = f"{node.subnet.network_address}-24&{node.subnet6.network_address}-64"
    lease = dual.leases()[f"/coreos.com/network/subnets/{subnets}"]
    pub = json.loads(lease)["BackendData"]["PublicKey"]
    assert lease == (
        f'{{"PublicIP":"{node.underlay_ip}","PublicIPv6":"{node.underlay_ip6}",'
        f'"BackendType":"wireguard","BackendData":{{"PublicKey":"{pub}"}},'
        f'"BackendV6Data":{{"PublicKey":"{pub}"}}}}'
    )


@pytest.fixture(scope="module")
def dual_bed(bed):
    """Two more nodes on a dual-stack wireguard network (its own prefix): flannel-wg and
    flannel-wg-v6, upstream's Mode "separate"."""
    yield from _two_dual_stack_nodes(DUAL)


def test_dual_stack_reaches_over_both_families_through_two_devices(dual_bed):
    a, b = dual_bed.nodes
    _both_families_reach_both_ways(dual_bed, timeout=10)
    _assert_dual_stack_lease_is_upstreams(dual_bed, a)
    out = a.in_daemon_mounts("wg", "show", "flannel-wg-v6", "dump").stdout.splitlines()
    fields = out[1].split("\t")
    assert fields[2] == f"[{b.underlay_ip6}]:51821" and fields[3] == str(b.subnet6)
    assert a.run("ip", "-6", "route", "show", "fd10::/48").stdout.split()[:3] == [
        "fd10::/48",
        "dev",
        "flannel-wg-v6",
    ]


@pytest.fixture(scope="module", params=["ipv6", "auto"])
def one_device_bed(request, bed):
    """Two nodes on a dual-stack wireguard network with Mode ipv6 or auto: one device,
    flannel-wg, carries both families (upstream's single-device modes)."""
    config = {**DUAL, "Backend": {"Type": "wireguard", "Mode": request.param}}
    for one in _two_dual_stack_nodes(config):
        one.mode = request.param
        yield one


def test_one_device_carries_both_families_over_the_underlay_the_mode_picks(one_device_bed):
    a, b = one_device_bed.nodes
    _both_families_reach_both_ways(one_device_bed, timeout=15)
    links = {link["ifname"] for link in a.ip_json("link", "show")}
    assert "flannel-wg" in links and "flannel-wg-v6" not in links
    out = a.in_daemon_mounts("wg", "show", "flannel-wg", "dump").stdout.splitlines()
    (peer,) = [line.split("\t") for line in out[1:]]
    # the bed's IPv4 underlay (198.51.100.0/24) is not private, so auto picks IPv4, as
    # upstream's selectMode; ipv6 picks the peer's PublicIPv6, at its device's port 51820
    want = (
        f"[{b.underlay_ip6}]:51820" if one_device_bed.mode == "ipv6" else f"{b.underlay_ip}:51820"
    )
    assert peer[2] == want, peer
    assert set(peer[3].split(",")) == {str(b.subnet), str(b.subnet6)}
    for family, network in (("-4", "10.1.0.0/16"), ("-6", "fd10::/48")):
        route = a.run("ip", family, "route", "show", network).stdout.split()
        assert route[:3] == [network, "dev", "flannel-wg"], route
    _assert_dual_stack_lease_is_upstreams(one_device_bed, a)
    assert a.status()["backend"]["mode"] == one_device_bed.mode


def _reaches_ip(a, address):
    assert a.ping(address, count=1, wait=1).received == 1


def test_a_second_wireguard_network_on_the_host_never_takes_over_the_device(bed):
    a = bed.nodes[0]
    (other,) = [n for n in bed.second_network("b") if n.index == a.index]
    bed.put_config(
        {"Network": "10.2.0.0/16", "Backend": {"Type": "wireguard"}}, prefix="/wg2/network"
    )
    key = public_key(a)
    other.start("--etcd-prefix=/wg2/network", "--healthz-port=0", private_run=True)
    assert other.proc.wait(timeout=20) == 1
    assert "flannel-wg already serves another network on this host" in other.log()
    other.proc = None
    assert public_key(a) == key and a.ping(bed.nodes[1].pod_ip, count=2, interval=0.1).lost == 0
