"""The UDP forwarding table: longest prefix wins (upstream takes the first match)."""

from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend.udp.routes import ForwardingTable


def addr(text: str) -> int:
    return int(IPv4Address(text))


def table(*routes):
    return ForwardingTable.build(
        (IPv4Network(net), IPv4Address(ip), port) for net, ip, port in routes
    )


def test_lookup_finds_the_owner_of_an_address():
    t = table(("10.1.2.0/24", "198.51.100.2", 8285), ("10.1.3.0/24", "198.51.100.3", 8285))
    assert t.lookup(addr("10.1.2.77")) == ("198.51.100.2", 8285)
    assert t.lookup(addr("10.1.3.1")) == ("198.51.100.3", 8285)
    assert t.lookup(addr("10.1.4.1")) is None


def test_longest_prefix_wins_whatever_the_insertion_order():
    broad_first = table(("10.1.0.0/16", "198.51.100.9", 1), ("10.1.2.0/24", "198.51.100.2", 2))
    narrow_first = table(("10.1.2.0/24", "198.51.100.2", 2), ("10.1.0.0/16", "198.51.100.9", 1))
    for t in (broad_first, narrow_first):
        assert t.lookup(addr("10.1.2.5")) == ("198.51.100.2", 2)
        assert t.lookup(addr("10.1.7.5")) == ("198.51.100.9", 1)


def test_senders_map_each_peer_to_the_subnets_it_owns():
    t = table(
        ("10.1.2.0/24", "198.51.100.2", 8285),
        ("10.1.3.0/24", "198.51.100.3", 7000),
        ("10.1.4.0/24", "198.51.100.3", 7000),
    )
    assert t.senders == {
        "198.51.100.2": ((addr("10.1.2.0"), addr("255.255.255.0")),),
        "198.51.100.3": (
            (addr("10.1.3.0"), addr("255.255.255.0")),
            (addr("10.1.4.0"), addr("255.255.255.0")),
        ),
    }
    assert len(t) == 3


def test_an_empty_table_routes_nothing():
    assert ForwardingTable().lookup(addr("10.1.2.3")) is None
    assert not ForwardingTable().senders
