"""`pyflannel trace SRC DST` on the bed: pyflannel nodes a and b, upstream flanneld v0.20.2 on
c, a pod behind each. A healthy path passes every place; then the path is broken at each place
in turn (a forward rule dropping, VXLAN dropped towards the upstream node, the underlay MTU too
small, the route deleted, the FDB entry wrong) and trace names that place first. From a node
that is not the source, trace reports the path state the source's node publishes."""

import json

import pytest

from testbed import breaks

from .conftest import FAST_RECONCILE, beside_upstream, eventually

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
ARGS = (*FAST_RECONCILE, "--probe-interval=1")


@pytest.fixture(scope="module")
def bed():
    yield from beside_upstream(CONFIG, ARGS, pods=True)


def trace(node, src, dst) -> tuple[int, dict]:
    proc = node.trace_cli(str(src), str(dst), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def places(doc: dict) -> dict[str, bool | None]:
    return {s["place"]: s["ok"] for s in doc["steps"]}


def test_a_healthy_path_passes_every_place(bed):
    a, b, _ = bed.nodes
    code, doc = trace(a, a.pod_ip, b.pod_ip)
    assert code == 0 and doc["verdict"] == "ok", doc
    assert places(doc) == {
        "store": True,
        "route": True,
        "neighbour": True,
        "fdb": True,
        "rules": True,
        "underlay": True,
        "encapsulation": True,
        "destination": True,
    }
    assert doc["src_node"]["this_node"] and doc["dst_node"]["public_ip"] == str(b.underlay_ip)
    assert doc["encapsulation"] == "vxlan" and doc["pod_mtu"] == 1450
    text = a.trace_cli(str(a.pod_ip), str(b.pod_ip)).stdout
    assert "verdict: OK" in text and "not masqueraded (both ends inside the network)" in text
    assert f"{b.subnet} held by {b.underlay_ip}, vxlan (VTEP MAC" in text


def test_a_forward_rule_dropping_is_named_with_the_rule(bed):
    a, b, _ = bed.nodes
    rule = ["FORWARD", "-s", f"{a.pod_ip}/32", "-d", f"{b.pod_ip}/32", "-j", "DROP"]
    a.run("iptables", "-I", *rule)
    try:
        code, doc = trace(a, a.pod_ip, b.pod_ip)
        assert code == 1 and doc["first_failure"]["place"] == "rules", doc
        assert (
            f"-A FORWARD -s {a.pod_ip}/32 -d {b.pod_ip}/32 -j DROP"
            in doc["first_failure"]["detail"]
        )
        assert a.ping(b.pod_ip, count=1).received == 0  # the trace is right: it is dropped
    finally:
        a.run("iptables", "-D", *rule)


def test_vxlan_dropped_to_the_upstream_node_is_named_and_not_healed(bed):
    a, _, c = bed.nodes
    rule = breaks.vxlan_out(c.underlay_ip)
    a.run("iptables", "-I", *rule)
    try:
        code, doc = trace(a, a.pod_ip, c.pod_ip)
        assert code == 1 and doc["first_failure"]["place"] == "encapsulation", doc
        assert "is lost while the underlay answers" in doc["first_failure"]["detail"]
        assert "UDP 8472" in doc["first_failure"]["detail"]
        assert places(doc)["underlay"] is True
        healer = next(s for s in doc["steps"] if s["place"] == "path healer")
        assert "offers no UDP port (upstream flanneld" in healer["detail"]
        text = a.trace_cli(str(a.pod_ip), str(c.pod_ip)).stdout
        assert "verdict: BROKEN at encapsulation:" in text
        print("\n" + text)
    finally:
        a.run("iptables", "-D", *rule)


def test_an_underlay_mtu_too_small_is_named(bed):
    """b's link carries 1400 bytes (its interface, its switch port; and since veth delivers
    oversized frames where a real link would not, a drop of anything larger arriving)."""
    from testbed import netns

    a, b, _ = bed.nodes
    limit = ["INPUT", "-i", "eth0", "-m", "length", "--length", "1401:65535", "-j", "DROP"]
    b.run("ip", "link", "set", "eth0", "mtu", "1400")
    netns.ip(bed.lan, "link", "set", f"v{b.index}", "mtu", "1400")
    b.run("iptables", "-I", *limit)
    try:
        code, doc = trace(a, a.pod_ip, b.pod_ip)
        assert code == 1 and doc["first_failure"]["place"] == "underlay", doc
        assert "1500-byte packets (don't-fragment)" in doc["first_failure"]["detail"]
        assert "small ones pass" in doc["first_failure"]["detail"]
    finally:
        b.run("iptables", "-D", *limit)
        b.run("ip", "link", "set", "eth0", "mtu", "1500")
        netns.ip(bed.lan, "link", "set", f"v{b.index}", "mtu", "1500")


def test_a_deleted_route_and_a_wrong_fdb_entry_are_named_with_the_daemon_stopped(bed):
    """The daemon would mend both at once: with it stopped (its entries stay), trace works
    from subnet.env, etcd and the kernel."""
    a, b, _ = bed.nodes
    a.stop()
    try:
        a.run("ip", "route", "del", str(b.subnet))
        code, doc = trace(a, a.pod_ip, b.pod_ip)
        assert code == 1 and doc["first_failure"]["place"] == "route", doc
        assert (
            "expected via" in doc["first_failure"]["detail"]
            or "no route" in (doc["first_failure"]["detail"])
        )
        a.run(
            "ip",
            "route",
            "replace",
            str(b.subnet),
            "via",
            str(b.subnet.network_address),
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "152",
        )
        mac = trace(a, a.pod_ip, b.pod_ip)[1]["dst_node"]["vtep_mac"]
        a.run("bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst", "198.51.100.99")
        code, doc = trace(a, a.pod_ip, b.pod_ip)
        assert code == 1 and doc["first_failure"]["place"] == "fdb", doc
        assert (
            f"is sent to 198.51.100.99, but the node is at {b.underlay_ip}"
            in (doc["first_failure"]["detail"])
        )
    finally:
        a.start(*ARGS)
        a.wait_ready()
    eventually(lambda: _passes(a, b), timeout=20)


def _passes(a, b):
    code, doc = trace(a, a.pod_ip, b.pod_ip)
    assert code == 0, doc


def test_from_another_node_trace_reports_the_published_path(bed):
    a, b, c = bed.nodes
    eventually(lambda: _published(b, a, c, True), timeout=20)
    rule = breaks.vxlan_out(c.underlay_ip)
    a.run("iptables", "-I", *rule)
    try:
        eventually(lambda: _published(b, a, c, False), timeout=30)
        _, doc = trace(b, a.pod_ip, c.pod_ip)
        assert (
            f"node {a.underlay_ip} reports its path to {c.subnet}: unreachable"
            in (doc["first_failure"]["detail"])
        )
    finally:
        a.run("iptables", "-D", *rule)


def _published(viewer, a, c, ok: bool):
    code, doc = trace(viewer, a.pod_ip, c.pod_ip)
    assert places(doc).get("published path") is ok, doc
    assert code == (0 if ok else 1)
