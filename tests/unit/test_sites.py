"""Sites, pure parts: where a peer is (placement.py), the node record (subnet/node_record.py),
an outside address learned from the public nodes' view, and relays (relay.py)."""

import base64
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.sites.placement import Where, at_address, outside_as_seen, place
from pyflannel.backend.sites.relay import DIRECT_RETRY, RELAY_AFTER, Relays, choose_relay
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.node_record import BadRecord, NodeRecord, parse_endpoint, parse_record

KEY = base64.b64encode(bytes(range(32))).decode()
DE1, DE2, OSLO, HOME = (IPv4Network(f"10.1.{i}.0/24") for i in (1, 2, 3, 4))


def lease(subnet: IPv4Network, public_ip: str) -> Lease:
    return Lease(subnet, LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan"))


def record(subnet, site, inside, outside=None, **kw) -> NodeRecord:
    outside = IPv4Address(outside) if outside else None
    return NodeRecord(subnet, site, IPv4Address(inside), outside, KEY, 51830, **kw)


PUBLIC1 = record(DE1, "de", "10.0.0.1", "198.51.100.1")
PUBLIC2 = record(DE2, "de", "10.0.0.2", "198.51.100.2")


# -- placement -------------------------------------------------------------------------------


def test_a_peer_without_a_record_is_reached_as_its_lease_says():
    where = place("de", lease(DE2, "198.51.100.2"), None)
    assert where.where is Where.AS_LEASE and where.address == IPv4Address("198.51.100.2")


def test_a_peer_of_this_site_is_reached_at_its_inside_address():
    where = place("de", lease(DE2, "198.51.100.2"), PUBLIC2)
    assert (where.where, where.address, where.site) == (
        Where.IN_SITE,
        IPv4Address("10.0.0.2"),
        "de",
    )
    moved = at_address(lease(DE2, "198.51.100.2"), where.address)
    assert moved.attrs.public_ip == IPv4Address("10.0.0.2") and moved.subnet == DE2


def test_a_peer_of_another_site_at_its_outside_address_else_its_leases():
    where = place("oslo", lease(DE2, "198.51.100.2"), PUBLIC2)
    assert (where.where, where.address, where.port) == (
        Where.ACROSS,
        IPv4Address("198.51.100.2"),
        51830,
    )
    natted = record(OSLO, "oslo", "192.168.3.2")
    where = place("de", lease(OSLO, "192.168.3.2"), natted)
    assert where.address == IPv4Address("192.168.3.2") and where.port == 51830
    learned = record(OSLO, "oslo", "192.168.3.2", "198.51.100.103", outside_port=40001)
    where = place("de", lease(OSLO, "192.168.3.2"), learned)
    assert (where.address, where.port) == (IPv4Address("198.51.100.103"), 40001)


def test_a_record_of_another_subnet_is_not_this_leases():
    assert place("de", lease(DE2, "198.51.100.2"), PUBLIC1).where is Where.AS_LEASE


# -- the record --------------------------------------------------------------------------------


def test_a_record_round_trips_and_says_only_what_it_has():
    stored = json.loads(PUBLIC1.to_bytes())
    assert stored == {
        "subnet": "10.1.1.0/24",
        "site": "de",
        "inside_ip": "10.0.0.1",
        "outside_ip": "198.51.100.1",
        "site_key": KEY,
        "site_port": 51830,
    }
    assert parse_record(PUBLIC1.to_bytes()) == PUBLIC1
    assert PUBLIC1.public and not record(OSLO, "oslo", "192.168.3.2").public


@pytest.mark.parametrize(
    "change, words",
    [
        ({"site": "a b"}, "site name"),
        ({"site_key": "bm90IGEga2V5"}, "not a WireGuard public key"),
        ({"site_port": 70000}, "not a UDP port"),
        ({"inside_ip": "nope"}, "inside_ip"),
        ({"outside_port": -1}, "outside_port"),
        ({"subnet": "10.1.1.0/33"}, "subnet"),
    ],
)
def test_a_bad_record_says_what_is_wrong(change, words):
    raw = {**json.loads(PUBLIC1.to_bytes()), **change}
    with pytest.raises(BadRecord, match=words):
        parse_record(json.dumps(raw))
    with pytest.raises(BadRecord, match="not a node record"):
        parse_record(b"\xff junk")


def test_endpoints_are_parsed_or_refused():
    assert parse_endpoint("198.51.100.7:40001") == (IPv4Address("198.51.100.7"), 40001)
    for junk in ("198.51.100.7", "x:1", "198.51.100.7:0", "198.51.100.7:99999", ""):
        assert parse_endpoint(junk) is None


# -- the outside address behind NAT ------------------------------------------------------------


def test_behind_nat_the_outside_is_what_most_public_nodes_see():
    seen = {str(OSLO): "198.51.100.103:40001"}
    other = {str(OSLO): "198.51.100.103:40002"}
    natted_view = record(HOME, "home", "192.168.4.2", seen={str(OSLO): "203.0.113.9:1"})
    third = record(IPv4Network("10.1.9.0/24"), "de", "10.0.0.9", "198.51.100.9", seen=seen)
    records = [
        record(DE1, "de", "10.0.0.1", "198.51.100.1", seen=seen),
        record(DE2, "de", "10.0.0.2", "198.51.100.2", seen=other),
        third,
        natted_view,  # not a public node: what it sees is not counted
    ]
    assert outside_as_seen(OSLO, records) == (IPv4Address("198.51.100.103"), 40001)
    assert outside_as_seen(HOME, records) is None


# -- relays ---------------------------------------------------------------------------------


def ep(handshake: float) -> PeerEndpoint:
    return PeerEndpoint("198.51.100.1:51830", "198.51.100.1:51830", int(handshake))


def test_the_relay_is_the_public_node_the_peer_named_else_the_lowest_with_a_session():
    records = {DE1: PUBLIC1, DE2: PUBLIC2, HOME: record(HOME, "home", "192.168.4.2")}
    assert choose_relay(OSLO, records[HOME], records, {DE1, DE2}) == DE1
    assert choose_relay(OSLO, records[HOME], records, {DE2}) == DE2
    named = record(HOME, "home", "192.168.4.2", via={str(OSLO): str(DE2)})
    assert choose_relay(OSLO, named, {**records, HOME: named}, {DE1, DE2}) == DE2
    assert choose_relay(OSLO, named, {**records, HOME: named}, {DE1}) == DE1  # none with DE2
    assert choose_relay(OSLO, records[HOME], records, set()) is None


def test_a_peer_without_a_session_is_relayed_after_a_while_and_direct_when_one_comes():
    home = record(HOME, "home", "192.168.4.2")
    records = {DE1: PUBLIC1, HOME: home}
    relays, t = Relays(), 1000.0
    sessions = {DE1: ep(t), HOME: ep(0)}
    assert relays.decide(OSLO, t, records, records, sessions) == []
    assert relays.decide(OSLO, t + RELAY_AFTER - 1, records, records, sessions) == []
    (said,) = relays.decide(OSLO, t + RELAY_AFTER, records, records, sessions)
    assert relays.via == {HOME: DE1} and "relayed via 10.1.1.0/24" in said
    assert relays.allowed(records) == {DE1: [str(DE1), str(HOME)], HOME: []}
    assert relays.retry_due(t + RELAY_AFTER + DIRECT_RETRY - 1) == []
    assert relays.retry_due(t + RELAY_AFTER + DIRECT_RETRY) == [HOME]
    sessions[HOME] = ep(t + 60)
    (said,) = relays.decide(OSLO, t + 61, records, records, sessions)
    assert relays.via == {} and "direct again" in said
    assert relays.allowed(records) == {DE1: [str(DE1)], HOME: [str(HOME)]}


def test_a_relay_whose_own_session_ends_is_replaced_and_gone_peers_are_forgotten():
    home = record(HOME, "home", "192.168.4.2")
    records = {DE1: PUBLIC1, DE2: PUBLIC2, HOME: home}
    relays, t = Relays(), 1000.0
    sessions = {DE1: ep(t), DE2: ep(t), HOME: ep(0)}
    relays.decide(OSLO, t, records, records, sessions)
    relays.decide(OSLO, t + RELAY_AFTER, records, records, sessions)
    assert relays.via == {HOME: DE1}
    sessions[DE1] = ep(t - 1000)  # its session is long dead
    relays.decide(OSLO, t + RELAY_AFTER + 1, records, records, sessions)
    assert relays.via == {HOME: DE2}
    relays.decide(OSLO, t + RELAY_AFTER + 2, {DE1: PUBLIC1, DE2: PUBLIC2}, records, sessions)
    assert relays.via == {} and HOME not in relays.trying_since
