"""The lease table: snapshots and events in, peer changes out (upstream's quirks fixed)."""

from ipaddress import IPv4Address, IPv4Network

from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import LeaseTable

NET = IPv4Network("10.1.0.0/16")
OWN = IPv4Network("10.1.1.0/24")


def lease(subnet: str, ip: str = "198.51.100.2", rev: int = 1) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan"))


def put(le: Lease, rev: int = 10) -> LeaseEvent:
    return LeaseEvent(EventKind.PUT, le.key, le.subnet, lease=le)


def delete(subnet: str, rev: int = 10) -> LeaseEvent:
    return LeaseEvent(EventKind.DELETE, subnet.replace("/", "-"), IPv4Network(subnet))


def subnets(leases) -> set[str]:
    return {str(le.subnet) for le in leases}


def test_snapshot_adds_peers_but_not_the_own_lease():
    table = LeaseTable(NET, OWN)
    changes = table.reset([lease("10.1.1.0/24", "198.51.100.1"), lease("10.1.2.0/24")])
    assert subnets(changes.added) == {"10.1.2.0/24"}
    assert changes.ignored == []
    assert subnets(table.peers()) == {"10.1.2.0/24"}


def test_second_snapshot_emits_only_differences_including_changed_attrs():
    table = LeaseTable(NET, OWN)
    table.reset([lease("10.1.2.0/24"), lease("10.1.3.0/24"), lease("10.1.4.0/24")])
    changes = table.reset(
        [lease("10.1.2.0/24"), lease("10.1.3.0/24", "198.51.100.33"), lease("10.1.5.0/24")]
    )
    assert subnets(changes.added) == {"10.1.3.0/24", "10.1.5.0/24"}
    assert subnets(changes.removed) == {"10.1.4.0/24"}


def test_own_lease_is_never_removed_by_a_second_snapshot():
    table = LeaseTable(NET, OWN)
    table.reset([lease("10.1.1.0/24", "198.51.100.1")])
    changes = table.reset([lease("10.1.1.0/24", "198.51.100.1")])
    assert not changes and changes.removed == []


def test_every_event_of_a_batch_is_applied():
    table = LeaseTable(NET, OWN)
    table.reset([])
    events = [put(lease(f"10.1.{i}.0/24")) for i in range(2, 102)]
    assert len(table.apply(events).added) == 100


def test_removal_reports_the_stored_lease_so_it_can_be_undone():
    table = LeaseTable(NET, OWN)
    stored = lease("10.1.2.0/24", "198.51.100.77")
    table.reset([stored])
    assert table.apply([delete("10.1.2.0/24")]).removed == [stored]


def test_put_then_delete_in_one_batch_is_no_change():
    table = LeaseTable(NET, OWN)
    table.reset([])
    assert not table.apply([put(lease("10.1.2.0/24")), delete("10.1.2.0/24")])


def test_junk_events_are_skipped_and_keep_every_peer():
    table = LeaseTable(NET, OWN)
    table.reset([lease("10.1.2.0/24"), lease("10.1.3.0/24")])
    junk = [
        LeaseEvent(EventKind.PUT, "/p/subnets/garbage", None, problem="not a subnet key"),
        LeaseEvent(
            EventKind.PUT,
            "10.1.2.0-24",
            IPv4Network("10.1.2.0/24"),
            problem="bad value: not JSON",
        ),
        LeaseEvent(EventKind.DELETE, "/p/subnets/garbage", None),
    ]
    changes = table.apply(junk)
    assert not changes
    assert [k for k, _ in changes.ignored] == [
        "/p/subnets/garbage",
        "10.1.2.0-24",
        "/p/subnets/garbage",
    ]
    assert subnets(table.peers()) == {"10.1.2.0/24", "10.1.3.0/24"}


def test_leases_outside_the_network_or_over_our_subnet_are_never_peers():
    table = LeaseTable(NET, OWN)
    changes = table.reset(
        [
            lease("10.2.0.0/24"),
            lease("10.1.0.0/16"),
            lease("10.1.1.0/25"),
            lease("10.1.0.0/23"),
            lease("10.1.7.0/24"),
        ]
    )
    assert subnets(changes.added) == {"10.1.7.0/24"}
    reasons = dict(changes.ignored)
    assert "not a subnet of the network" in reasons["10.2.0.0-24"]
    assert "not a subnet of the network" in reasons["10.1.0.0-16"]
    assert "overlaps this node's subnet" in reasons["10.1.1.0-25"]
    assert "overlaps this node's subnet" in reasons["10.1.0.0-23"]


def test_our_previous_lease_is_never_a_peer_even_before_etcd_says_who_holds_it_now():
    table = LeaseTable(NET, OWN, own_ip=IPv4Address("198.51.100.1"))
    table.reset([lease("10.1.1.0/24", "198.51.100.1"), lease("10.1.2.0/24")])
    # Our lease was lost; we moved to 10.1.9.0/24 before the watch told us anything new.
    changes = table.set_own(IPv4Network("10.1.9.0/24"))
    assert not changes.added and not changes.removed
    assert subnets(table.peers()) == {"10.1.2.0/24"}


def test_moving_to_a_new_subnet_makes_the_old_one_a_peer_when_someone_else_holds_it():
    table = LeaseTable(NET, OWN)
    table.reset([lease("10.1.1.0/24", "198.51.100.1")])
    # Our lease expired and another node took 10.1.1.0/24; we moved to 10.1.9.0/24.
    table.apply(
        [put(lease("10.1.1.0/24", "198.51.100.3")), put(lease("10.1.9.0/24", "198.51.100.1"))]
    )
    changes = table.set_own(IPv4Network("10.1.9.0/24"))
    assert subnets(changes.added) == {"10.1.1.0/24"}
    assert subnets(table.peers()) == {"10.1.1.0/24"}
