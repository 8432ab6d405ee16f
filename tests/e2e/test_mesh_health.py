"""Mesh health on the bed: three VXLAN nodes, node 3 on an underlay of MTU 1400 (the others
1500). Every neighbour, FDB entry and route is in the kernel, yet full-size packets to node 3
vanish: the prober says so on the other nodes, `pyflannel status` exits non-zero naming the
peer; mended, it clears. A peer whose VXLAN traffic is dropped is named unreachable, then
recovers; a peer that is gone stops being probed."""

import json
import time

import pytest

from .conftest import eventually, require_testbed

# Without path healing: this module is about naming broken paths (a dropped VXLAN path would
# be healed over UDP; tests/e2e/test_path_healing.py)
ARGS = ("--reconcile-interval=2", "--probe-interval=1", "--heal-paths=false")


@pytest.fixture(scope="module")
def bed():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=3) as bed:
        bed.put_config()
        c = bed.nodes[2]
        set_underlay_mtu(bed, c, 1400)
        for node in bed.nodes:
            node.start(*ARGS)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


LIMIT = ["INPUT", "-p", "udp", "-m", "length", "--length", "1401:65535", "-j", "DROP"]


def set_underlay_mtu(bed, node, mtu: int) -> None:
    """Node's underlay link at ``mtu``: its interface, its switch port, and (veth delivers
    oversized frames where a real link would not) a drop of anything larger arriving."""
    from testbed import netns

    node.run("ip", "link", "set", "eth0", "mtu", str(mtu))
    netns.ip(bed.lan, "link", "set", f"v{node.index}", "mtu", str(mtu))
    if mtu < 1500:
        node.run("iptables", "-I", *LIMIT)
    else:
        node.run("iptables", "-D", *LIMIT)


def path(node, peer) -> dict:
    rows = {r["subnet"]: r for r in node.status()["peers"]}
    return rows[str(peer.subnet)]["path"] or {}


def _state(node, peer, want):
    assert path(node, peer).get("state") == want


def test_an_mtu_mismatch_is_named_on_the_other_nodes_and_status_fails(bed):
    a, b, c = bed.nodes
    t0 = time.monotonic()
    eventually(lambda: _state(a, c, "mtu black hole"), timeout=30)
    detected = time.monotonic() - t0
    _state(a, b, "ok")
    proc = a.status_cli()
    assert proc.returncode == 1, proc.stdout
    assert (
        f"full-size packets (1450 bytes) to {c.subnet} at {c.underlay_ip} are lost, small ones "
        "pass: an MTU black hole on the path; check the underlay MTU on both nodes" in proc.stdout
    )
    doc = json.loads(a.status_cli("--json").stdout)
    assert {r["subnet"]: r["path"]["state"] for r in doc["peers"]}[
        str(c.subnet)
    ] == "mtu black hole"
    metrics = a.endpoint("/metrics")
    assert f'pyflannel_peer_mtu_black_hole{{peer="{c.subnet}"}} 1.0' in metrics
    assert a.log().count(f"mesh: peer {c.subnet} at {c.underlay_ip} is now mtu black hole") == 1
    print(f"\nMTU black hole named after {detected:.1f} s")


def test_mending_the_mtu_clears_it(bed):
    a, _, c = bed.nodes
    set_underlay_mtu(bed, c, 1500)
    eventually(lambda: _state(a, c, "ok"), timeout=30)
    assert a.status_cli().returncode == 0


def test_a_peer_whose_vxlan_is_dropped_is_unreachable_then_recovers(bed):
    a, b, _ = bed.nodes
    rule = ["INPUT", "-p", "udp", "--dport", "8472", "-s", str(a.underlay_ip), "-j", "DROP"]
    b.run("iptables", "-I", *rule)
    try:
        eventually(lambda: _state(a, b, "unreachable"), timeout=30)
        assert "does not answer through the overlay" in a.status_cli().stdout
    finally:
        b.run("iptables", "-D", *rule)
    eventually(lambda: _state(a, b, "ok"), timeout=30)


def test_tcp_through_the_overlay_broken_while_icmp_passes_is_named(bed):
    a, b, _ = bed.nodes
    rule = ["INPUT", "-p", "tcp", "-d", str(b.subnet.network_address), "-j", "DROP"]
    b.run("iptables", "-I", *rule)
    try:
        eventually(lambda: _state(a, b, "tcp broken"), timeout=30)
        out = a.status_cli()
        assert out.returncode == 1 and "passes but TCP through the overlay does not" in out.stdout
    finally:
        b.run("iptables", "-D", *rule)
    eventually(lambda: _state(a, b, "ok"), timeout=30)


FORGE = """
import socket, struct, sys
from pyflannel.ops.mesh.prober import checksum
ident, target = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for seq in range(65536):
    body = b"forged!!" + bytes(8)
    head = struct.pack("!BBHHH", 0, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 0, 0, checksum(head + body), ident, seq) + body, (target, 0))
"""


def test_forged_echo_replies_do_not_make_an_unreachable_peer_reachable(bed):
    """Replies with the prober's ICMP id and every sequence number, from the probed address,
    but not the probe's nonce: the peer stays unreachable."""
    import sys

    a, b, _ = bed.nodes
    rule = ["INPUT", "-p", "udp", "--dport", "8472", "-s", str(a.underlay_ip), "-j", "DROP"]
    b.run("iptables", "-I", *rule)
    try:
        eventually(lambda: _state(a, b, "unreachable"), timeout=30)
        for _ in range(2):
            b.run(
                sys.executable,
                "-c",
                FORGE,
                str(a.pid & 0xFFFF),
                str(a.subnet.network_address),
                timeout=60,
            )
        _state(a, b, "unreachable")
    finally:
        b.run("iptables", "-D", *rule)
    eventually(lambda: _state(a, b, "ok"), timeout=30)


def test_the_broken_pair_is_visible_from_any_node_at_little_etcd_cost(bed):
    """Each node publishes its paths next to its lease (written on change only): `pyflannel
    status --cluster` on a node that is not part of the broken pair shows it."""
    a, b, c = bed.nodes
    set_underlay_mtu(bed, c, 1400)
    try:
        eventually(lambda: _state(a, c, "mtu black hole"), timeout=30)
        eventually(lambda: _listed(b, a, c), timeout=20)
        text = b.status_cli("--cluster").stdout
        assert f"{a.subnet} -> {c.subnet}: mtu black hole" in text
        writes = a.status()["mesh"]["summaries_written"]
        time.sleep(6)  # a publish period with nothing new: no write
        assert a.status()["mesh"]["summaries_written"] == writes
    finally:
        set_underlay_mtu(bed, c, 1500)
    eventually(lambda: _state(a, c, "ok"), timeout=30)


def _listed(viewer, a, c):
    rows = {r["subnet"]: r for r in json.loads(viewer.status_cli("--cluster", "--json").stdout)}
    assert (rows[str(a.subnet)]["paths"] or {}).get(str(c.subnet)) == "mtu black hole"


def test_doctor_probes_the_paths_once_and_reports_the_checksum_offload(bed):
    a, b, c = bed.nodes
    code, findings = a.doctor("--probe")
    assert code == 0 and findings[f"path {b.subnet}"]["status"] == "pass", findings
    assert "TCP probes pass" in findings[f"path {c.subnet}"]["detail"]
    set_underlay_mtu(bed, c, 1400)
    try:
        code, findings = a.doctor("--probe", str(c.subnet))
        assert code == 1 and list(findings) == [f"path {c.subnet}"]
        assert "an MTU black hole on the path" in findings[f"path {c.subnet}"]["detail"]
    finally:
        set_underlay_mtu(bed, c, 1500)
    _, findings = a.doctor()
    assert "flannel.1: tx-checksum-ip-generic" in findings["checksum offload"]["detail"]


def test_a_peer_that_is_gone_stops_being_probed(bed):
    a, _, c = bed.nodes
    c.stop()
    bed.etcd.ctl("del", f"/coreos.com/network/subnets/{c.subnet.network_address}-24")
    eventually(lambda: _gone(a, c), timeout=15)


def _gone(a, c):
    assert str(c.subnet) not in {r["subnet"] for r in a.status()["peers"]}
