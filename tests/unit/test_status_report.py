"""The status document (ops/status/document.py) and its judge and renderer (report.py), pure:
a document as the daemon serves it, read back typed, judged and shown. End to end (a real
daemon's /status, ``pyflannel status`` with the daemon down): tests/e2e/test_operations.py."""

import json
import time
from dataclasses import replace

import pytest

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.sites.placement import PlacementView
from pyflannel.ops.doctor.checks import FAIL, PASS, WARN, judge_site
from pyflannel.ops.snapshot import HealView, LeaseView, ProbeView, StoreStatus, TrafficView
from pyflannel.ops.status.document import (
    BackendSection,
    DaemonState,
    PeerHalf6,
    PeerRow,
    SchemaError,
    StatusDoc,
    SubnetEnvState,
)
from pyflannel.ops.status.report import DEGRADED, HEALTHY, UNHEALTHY, assess, exit_code, render
from pyflannel.subnet.manager import StoreFacts
from pyflannel.traffic.br_netfilter import BridgeNf

PEER = PeerRow(
    subnet="10.1.2.0/24",
    public_ip="192.168.5.2",
    encap="vxlan",
    vtep_mac="aa:bb:cc:00:00:02",
    neighbour=True,
    fdb=True,
    route=True,
    path=ProbeView("ok", rtt_ms=0.31, rtt_max_ms=0.5, loss=0.0, since=0.0),
)


def healthy() -> StatusDoc:
    return StatusDoc(
        daemon=DaemonState(running=True, pid=42, version="1.0", started=time.time(), ready=True),
        store=StoreStatus(
            "etcd",
            current="https://10.0.0.5:2379",
            reachable=True,
            facts=StoreFacts(endpoints=("https://10.0.0.5:2379",), revision=17, leader="8e9e"),
        ),
        network="10.1.0.0/16",
        lease=LeaseView(subnet="10.1.1.0/24", expires_in_s=86000.0, last_renewal=time.time()),
        backend=BackendSection(
            type="vxlan",
            device="flannel.1",
            mtu=1450,
            mtu_reason="1500 (eth0) - 50 (VXLAN overhead)",
            device_present=True,
            details={"vni": 1, "port": 8472, "vtep_mac": "aa:bb:cc:00:00:01"},
        ),
        peers=(PEER,),
        subnet_env=SubnetEnvState("/run/flannel/subnet.env"),
        bridge_nf=BridgeNf("1", "1"),
        iptables=TrafficView(enabled=True, masquerade=True, forward=True, present=True),
    )


def with_peer(doc: StatusDoc, **changes) -> StatusDoc:
    return replace(doc, peers=(replace(PEER, **changes),))


def test_a_healthy_node_is_said_healthy_with_its_facts():
    doc = healthy()
    assert assess(doc) == ([], []) and exit_code(doc) == HEALTHY
    text = render(doc)
    assert text.startswith("pyflannel on this node: HEALTHY\n")
    assert "backend    vxlan on flannel.1 (VNI 1, port 8472, VTEP MAC aa:bb:cc:00:00:01)" in text
    assert "MTU 1450 = 1500 (eth0) - 50 (VXLAN overhead)" in text
    assert "etcd       https://10.0.0.5:2379: reachable, revision 17" in text
    assert "  10.1.2.0/24        192.168.5.2     vxlan  aa:bb:cc:00:00:02  ok " in text
    assert "iptables   masquerade + forward: in place" in text


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda d: replace(d, daemon=DaemonState(running=False, reason="no answer on x")),
            "daemon not running (no answer on x)",
        ),
        (
            lambda d: replace(
                d, daemon=replace(d.daemon, ready=False, not_ready=("no lease yet",))
            ),
            "daemon not ready: no lease yet",
        ),
        (lambda d: replace(d, lease=None), "no subnet lease"),
        (
            lambda d: replace(d, backend=replace(d.backend, device_present=False)),
            "device flannel.1 missing",
        ),
        (
            lambda d: with_peer(d, route=False, fdb=False),
            "peer 10.1.2.0/24: fdb, route not programmed",
        ),
        (
            lambda d: replace(d, subnet_env=SubnetEnvState("/run/x.env", ("missing (gone)",))),
            "subnet.env: missing (gone)",
        ),
        (
            lambda d: replace(
                d,
                iptables=TrafficView(
                    "nftables", True, True, True, True, "flushed by someone", present=False
                ),
            ),
            "nftables rules missing: flushed by someone",
        ),
    ],
)
def test_what_breaks_the_overlay_is_a_problem_in_words(change, problem):
    doc = change(healthy())
    problems, _ = assess(doc)
    assert problem in problems and exit_code(doc) == UNHEALTHY
    assert f"  ! {problem}\n" in render(doc)


@pytest.mark.parametrize(
    "change, warning",
    [
        (
            lambda d: replace(d, store=replace(d.store, reachable=False, last_error="refused")),
            "etcd unreachable: refused",
        ),
        (
            lambda d: replace(d, lease=replace(d.lease, expires_in_s=600.0)),
            "lease expires in 600 s",
        ),
        (
            lambda d: replace(d, config_change="Backend.Type vxlan -> host-gw"),
            "the network config in etcd changed since start (Backend.Type vxlan -> host-gw): "
            "restart the daemon to apply it",
        ),
        (
            lambda d: replace(d, backend=replace(d.backend, details={"fallback": "no vxlan"})),
            "running in UDP fallback: no vxlan",
        ),
        (
            lambda d: with_peer(d, ipv6=PeerHalf6(problem="its lease has no IPv6 VTEP")),
            "peer 10.1.2.0/24: IPv6 not programmed: its lease has no IPv6 VTEP",
        ),
        (
            lambda d: with_peer(d, path=ProbeView("lossy", 0.4, 0.9, 0.25, 0.0)),
            "peer 10.1.2.0/24 at 192.168.5.2: 25% of the probes lost",
        ),
    ],
)
def test_what_works_now_but_needs_attention_is_a_warning(change, warning):
    doc = change(healthy())
    problems, warnings = assess(doc)
    assert problems == [] and warning in warnings and exit_code(doc) == DEGRADED


def test_a_black_hole_names_the_mtu_and_why_it_was_not_healed():
    hole = ProbeView("mtu black hole", 0.3, 0.3, 0.0, 0.0)
    doc = with_peer(healthy(), path=hole, heal=HealView(via="vxlan", cannot_heal="no UDP port"))
    (problem,), _ = assess(doc)
    assert problem.startswith("full-size packets (1450 bytes) to 10.1.2.0/24 at 192.168.5.2")
    assert problem.endswith("(not moved to UDP: no UDP port)")


def test_a_black_hole_whose_path_mtu_is_fixed_degrades_and_is_not_a_problem():
    fixed = ProbeView(
        "mtu black hole", 0.3, 0.3, 0.0, 0.0, path_mtu=1350, path_mtu_since=time.time() - 60
    )
    doc = with_peer(healthy(), path=fixed)
    problems, (warning,) = assess(doc)
    assert problems == [] and exit_code(doc) == DEGRADED
    assert warning.startswith("path to 10.1.2.0/24 carries 1350 bytes, not 1450: fixed on")
    assert "(route MTU 1350, MSS clamp 1310); every other peer keeps 1450" in warning
    assert "ok      ok      fixed at 1350" in render(doc)
    assert StatusDoc.parse(doc.to_json()) == doc


def test_a_peer_moved_to_udp_says_why_and_when_it_comes_back():
    heal = HealView(via="udp", since=time.time() - 30, why="vxlan blocked", back_after=2)
    doc = with_peer(healthy(), heal=heal)
    _, (warning,) = assess(doc)
    assert "via udp: vxlan blocked since" in warning and "back after 2 clean rounds" in warning
    assert "    via udp: vxlan blocked since" in render(doc)


def test_a_wireguard_peers_learned_endpoint_is_shown_beside_what_its_lease_says():
    # two hours ago: "2.0 h ago" whatever fraction of a second the render starts at
    learned = PeerEndpoint("203.0.113.7:40001", "192.168.2.2:51820", int(time.time()) - 7200)
    doc = with_peer(healthy(), endpoint=learned)
    assert assess(doc) == ([], [])  # a learned endpoint is how NAT works, not a problem
    assert (
        "    WireGuard: sent to 203.0.113.7:40001 (learned from its packets; its lease says "
        "192.168.2.2:51820), handshake 2.0 h ago"
    ) in render(doc)
    wire = json.loads(json.dumps(doc.to_json()))
    assert wire["peers"][0]["endpoint"]["endpoint"] == "203.0.113.7:40001"
    assert StatusDoc.parse(wire) == doc
    never = with_peer(healthy(), endpoint=PeerEndpoint("198.51.100.2:51820", "198.51.100.2:51820"))
    assert "    WireGuard: sent to 198.51.100.2:51820, handshake never" in render(never)


def test_a_dual_stack_peer_is_judged_per_family():
    half = PeerHalf6("fd00:2::/64", "fd00::2", "vxlan", "aa:bb:cc:00:01:02", True, True, False)
    doc = replace(with_peer(healthy(), ipv6=half), network6="fd00::/48")
    problems, _ = assess(doc)
    assert problems == ["peer fd00:2::/64: IPv6 route not programmed"]
    assert "    fd00:2::/64              fd00::2                 ok      ok      MISSING" in render(
        doc
    )


def test_bridge_netfilter_off_is_a_warning_with_the_fix():
    doc = replace(healthy(), bridge_nf=BridgeNf("0", None))
    _, (warning,) = assess(doc)
    assert "net.bridge.bridge-nf-call-iptables is not 1" in warning and "fix: sysctl -w" in warning


# -- the document on the wire ------------------------------------------------------------------


def test_the_document_round_trips_through_json_in_its_published_shape():
    doc = with_peer(healthy(), heal=HealView(via="vxlan"))
    wire = json.loads(json.dumps(doc.to_json()))
    # the shape tools read since the first release
    assert wire["store"] == "etcd" and wire["etcd"]["revision"] == 17
    assert wire["backend"]["vni"] == 1 and wire["backend"]["mtu"] == 1450
    assert wire["peers"][0]["path"]["rtt_ms"] == 0.31 and "ipv6" not in wire["peers"][0]
    assert StatusDoc.parse(wire) == doc


def test_a_newer_daemons_extra_fields_are_ignored():
    doc = healthy()
    wire = doc.to_json()
    wire["daemon"]["threads"] = 7
    wire["peers"][0]["region"] = "paris"
    assert StatusDoc.parse(wire) == doc


@pytest.mark.parametrize(
    "spoil, where",
    [
        (lambda w: w["backend"].update(mtu="1450"), "backend.mtu: expected int, got '1450'"),
        (lambda w: w["peers"][0].pop("subnet"), "peers[0].subnet: missing"),
        (lambda w: w["daemon"].update(ready="yes"), "daemon.ready: expected bool, got 'yes'"),
        (lambda w: w["peers"][0]["path"].update(loss=None), "peers[0].path.loss: expected float"),
        (lambda w: w.update(store=3), "store: 3 names no section of the document"),
        (lambda w: w.update(peers={}), "peers: expected a list, got {}"),
    ],
)
def test_a_malformed_document_is_refused_naming_the_field(spoil, where):
    wire = healthy().to_json()
    spoil(wire)
    with pytest.raises(SchemaError) as caught:
        StatusDoc.parse(wire)
    assert str(caught.value).startswith(where)


# -- --site: the site line, the peer's placement, doctor's verdict ------------------------------


def sited(outside: str, learned: bool, path: str, handshake: int = 0, relays=()) -> StatusDoc:
    doc = healthy()
    details = {
        **doc.backend.details,
        "site": "oslo",
        "outside": outside,
        "outside_learned": learned,
        "relaying_for": list(relays),
    }
    placement = PlacementView("de", path, True, "198.51.100.1", "10.1.9.0/24" * (path == "relayed"))
    endpoint = PeerEndpoint("198.51.100.1:51830", "198.51.100.1:51830", handshake)
    doc = replace(doc, backend=replace(doc.backend, details=details))
    return with_peer(
        doc, encap="site", placement=replace(placement, words=f"words {path}"), endpoint=endpoint
    )


def test_a_sited_node_says_its_site_its_outside_and_each_peers_placement():
    doc = sited("198.51.100.103:51830", True, "across sites", handshake=int(time.time()))
    text = render(doc)
    assert "site       oslo, outside 198.51.100.103:51830 (as the public nodes see it" in text
    assert "    words across sites" in text
    assert StatusDoc.parse(doc.to_json()) == doc
    finding = judge_site(doc)
    assert finding.status == PASS and "learned: behind NAT" in finding.detail
    assert "1 across sites (1 with a session)" in finding.detail
    relay = render(sited("198.51.100.1:51830", False, "across sites", relays=["a <-> b"]))
    assert "site       oslo, outside 198.51.100.1:51830; relays for a <-> b" in relay


def test_doctor_names_a_natted_node_nobody_answers_and_relayed_peers():
    lost = judge_site(sited("", False, "across sites"))
    assert lost.status == FAIL and "no node with an address of its own answers" in lost.detail
    assert "--site-port" in lost.advice
    relayed = judge_site(sited("198.51.100.103:51830", True, "relayed"))
    assert relayed.status == WARN and "relayed, no direct session: 10.1.2.0/24" in relayed.detail
    assert judge_site(healthy()) is None  # no --site: nothing to say


def test_a_relay_says_how_many_datagrams_came_from_strangers():
    doc = sited("198.51.100.1:51830", False, "across sites", relays=["a <-> b"])
    assert "site port" not in render(doc)  # not counted (nftables mode): nothing said
    counted = replace(doc, iptables=replace(doc.iptables, site_strangers=50))
    assert "site port  50 datagrams from no member's address" in render(counted)
    assert StatusDoc.parse(counted.to_json()) == counted
