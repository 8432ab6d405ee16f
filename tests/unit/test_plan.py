"""Desired kernel state (the shapes of entries a peer needs; the VXLAN and UDP backends'
peers as examples) and the diff that reconciles the kernel to it."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.plan import (
    DesiredState,
    KernelState,
    Op,
    Peer,
    PeerDataError,
    Route,
    desired_state,
    diff,
    overlay_entries,
    parse_mac,
    peer_entries,
    record,
)
from pyflannel.backend.udp.peer import udp_peer, udp_port
from pyflannel.backend.vxlan.peer import vxlan_peer
from pyflannel.subnet.lease import Lease, LeaseAttrs


def vxlan(subnet: str, ip: str, mac: str) -> Peer:
    """A VXLAN peer as the VXLAN backend makes it (its entries: the overlay's)."""
    net, address = IPv4Network(subnet), IPv4Address(ip)
    return Peer(net, address, "vxlan", mac, entries=overlay_entries(net, mac, address))


A = vxlan("10.1.2.0/24", "198.51.100.2", "02:00:00:00:00:02")
B = vxlan("10.1.3.0/24", "198.51.100.3", "02:00:00:00:00:03")


def vxlan_lease(data, public_ip="198.51.100.2", backend="vxlan"):
    return Lease(
        IPv4Network("10.1.2.0/24"), LeaseAttrs(IPv4Address(public_ip), None, backend, data)
    )


def test_a_peer_needs_a_neighbour_an_fdb_entry_and_an_onlink_route():
    state = peer_entries(A)
    assert state.neighbours == {IPv4Address("10.1.2.0"): "02:00:00:00:00:02"}
    assert state.fdb == {"02:00:00:00:00:02": IPv4Address("198.51.100.2")}
    assert state.routes == {IPv4Network("10.1.2.0/24"): Route(IPv4Address("10.1.2.0"), "onlink")}


def test_a_direct_peer_needs_only_a_route_via_its_public_ip():
    direct = vxlan_peer(vxlan_lease({"VNI": 1, "VtepMAC": "02:00:00:00:00:02"}), direct=True)
    state = peer_entries(direct)
    assert (direct.encap, state.neighbours, state.fdb) == ("direct", {}, {})
    assert state.routes == {A.subnet: Route(A.public_ip, "underlay")}


def test_a_vxlan_nodes_udp_peer_needs_only_a_route_into_the_tunnel_device():
    udp = udp_peer(vxlan_lease(None, backend=""), 8285, routed=True)
    assert peer_entries(udp) == KernelState(routes={A.subnet: Route(None, "tunnel")})
    # On a UDP node the network's one route covers every peer: none of their own.
    assert peer_entries(udp_peer(vxlan_lease(None, backend=""), 8285)) == KernelState()


def test_diff_from_empty_adds_neighbour_then_fdb_then_route():
    ops = diff(peer_entries(A), KernelState())
    assert [(op.action, op.table) for op in ops] == [
        ("replace", "neigh"),
        ("replace", "fdb"),
        ("replace", "route"),
    ]


def test_diff_to_empty_deletes_route_first():
    ops = diff(KernelState(), peer_entries(A))
    assert [(op.action, op.table) for op in ops] == [
        ("delete", "route"),
        ("delete", "fdb"),
        ("delete", "neigh"),
    ]


def test_diff_of_equal_states_is_empty():
    assert diff(desired_state([A, B]), desired_state([A, B])) == []


def test_diff_replaces_a_changed_mac_and_deletes_the_old_fdb_entry():
    moved = vxlan(str(A.subnet), str(A.public_ip), "02:00:00:00:00:99")
    ops = diff(peer_entries(moved), peer_entries(A))
    assert Op("delete", "fdb", "02:00:00:00:00:02", A.public_ip) in ops
    assert Op("replace", "fdb", "02:00:00:00:00:99", A.public_ip) in ops
    assert Op("replace", "neigh", A.gateway, "02:00:00:00:00:99") in ops
    assert not any(op.table == "route" for op in ops)


def test_scoped_diff_looks_only_at_the_given_peer():
    actual = KernelState()  # nothing programmed at all
    ops = diff(desired_state([A, B]), actual, scope=peer_entries(B))
    assert {op.key for op in ops} == {B.gateway, B.vtep_mac, B.subnet}


def test_record_makes_the_model_match_after_applying_the_plan():
    desired, actual = desired_state([A, B]), desired_state([A])
    actual.routes[IPv4Network("10.1.9.0/24")] = Route(IPv4Address("10.1.9.0"), "onlink")  # stale
    for op in diff(desired, actual):
        record(actual, op)
    assert actual == desired


def test_an_entry_two_peers_share_stays_until_both_are_gone():
    desired = DesiredState()
    second = vxlan("10.1.7.0/24", str(A.public_ip), A.vtep_mac)  # same VTEP
    desired.add(peer_entries(A))
    desired.add(peer_entries(second))
    desired.discard(peer_entries(A))
    assert desired.state.fdb == {A.vtep_mac: A.public_ip}
    assert list(desired.state.routes) == [second.subnet]
    desired.discard(peer_entries(second))
    assert desired.state == KernelState()


def test_conflicting_values_newest_wins_and_the_older_returns_when_it_leaves():
    desired = DesiredState()
    moved = vxlan("10.1.7.0/24", "198.51.100.7", A.vtep_mac)
    desired.add(peer_entries(A))
    desired.add(peer_entries(moved))
    assert desired.state.fdb[A.vtep_mac] == moved.public_ip
    desired.discard(peer_entries(moved))
    assert desired.state.fdb[A.vtep_mac] == A.public_ip


def test_discarding_what_was_never_added_changes_nothing():
    desired = DesiredState()
    desired.add(peer_entries(A))
    desired.discard(peer_entries(B))
    assert desired.state == peer_entries(A)


def test_vxlan_peer_from_an_upstream_lease():
    peer = vxlan_peer(vxlan_lease({"VNI": 1, "VtepMAC": "C6:D2:32:6F:8F:44"}))
    assert peer == Peer(
        IPv4Network("10.1.2.0/24"), IPv4Address("198.51.100.2"), "vxlan", "c6:d2:32:6f:8f:44"
    )


@pytest.mark.parametrize(
    "text, mac",
    [("c6-d2-32-6f-8f-44", "c6:d2:32:6f:8f:44"), ("c6d2.326f.8f44", "c6:d2:32:6f:8f:44")],
)
def test_mac_forms_go_accepts(text, mac):
    assert parse_mac(text) == mac


@pytest.mark.parametrize(
    "lease, reason",
    [
        (vxlan_lease(None, backend=""), "not vxlan"),
        (vxlan_lease({"VNI": 1, "VtepMAC": "x"}, backend="host-gw"), "not vxlan"),
        (vxlan_lease(None), "BackendData is missing"),
        (vxlan_lease([1]), "BackendData is not a JSON object"),
        (vxlan_lease({"VNI": 1}), "VtepMAC is not a string"),
        (vxlan_lease({"VtepMAC": "zz:00:00:00:00:00"}), "not a MAC"),
        (vxlan_lease({"VtepMAC": "02:00:00:00:00"}), "not a MAC"),
        (vxlan_lease({"VtepMAC": "02:00:00:00:00:00:00:00"}), "not a MAC"),
        (vxlan_lease({"VtepMAC": "01:00:5e:00:00:01"}), "multicast"),
        (vxlan_lease({"VtepMAC": "02:00:00:00:00:01"}, public_ip="0.0.0.0"), "cannot be a tunnel"),
        (
            vxlan_lease({"VtepMAC": "02:00:00:00:00:01"}, public_ip="224.0.0.1"),
            "cannot be a tunnel",
        ),
    ],
)
def test_unusable_leases_are_rejected_with_a_reason(lease, reason):
    with pytest.raises(PeerDataError, match=reason):
        vxlan_peer(lease)


@pytest.mark.parametrize(
    "backend, data, port",
    [
        ("", None, 8285),  # upstream UDP node: no BackendType, everyone on the local port
        ("udp", {"Port": 7000}, 7000),  # pyflannel node that fell back to UDP
        ("udp", None, 8285),
        ("vxlan", {"VNI": 1, "VtepMAC": "02:00:00:00:00:02", "UDPPort": 8300}, 8300),
        ("vxlan", {"VNI": 1, "VtepMAC": "02:00:00:00:00:02"}, None),  # upstream VXLAN node
        ("host-gw", None, None),
    ],
)
def test_which_peers_accept_udp_and_on_which_port(backend, data, port):
    assert udp_port(vxlan_lease(data, backend=backend), 8285) == port


def test_udp_peer_from_a_fallback_lease():
    peer = udp_peer(vxlan_lease({"Port": 7000, "Reason": "no vxlan"}, backend="udp"), 8285)
    assert (peer.encap, peer.udp_port, str(peer.public_ip)) == ("udp", 7000, "198.51.100.2")


@pytest.mark.parametrize("data", [{"Port": "8285"}, {"Port": 0}, {"Port": 70000}, {"Port": True}])
def test_bad_udp_ports_are_rejected(data):
    with pytest.raises(PeerDataError, match="not a port number"):
        udp_peer(vxlan_lease(data, backend="udp"), 8285)


def test_a_peer_that_cannot_do_udp_is_rejected_by_a_udp_node():
    with pytest.raises(PeerDataError, match="does not accept UDP encapsulation"):
        udp_peer(vxlan_lease({"VNI": 1, "VtepMAC": "02:00:00:00:00:02"}), 8285)


def test_a_network_owns_routes_only_inside_its_cidrs():
    from ipaddress import IPv4Network

    from pyflannel.backend.kernel import Devices

    mine = Devices(networks=(IPv4Network("10.1.0.0/16"), IPv4Network("10.7.0.0/16")))
    assert mine.owns_route(IPv4Network("10.1.5.0/24"))
    assert mine.owns_route(IPv4Network("10.1.0.0/16"))  # the udp backend's network route
    assert mine.owns_route(IPv4Network("10.7.9.0/24"))  # the CIDR before a config change
    assert not mine.owns_route(IPv4Network("10.2.0.0/16"))  # another network's
    assert not mine.owns_route(IPv4Network("10.0.0.0/8"))
    assert not Devices().owns_route(IPv4Network("10.1.5.0/24"))
