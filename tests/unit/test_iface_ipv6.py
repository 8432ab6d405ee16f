"""Choosing the IPv6 address on a dual-stack network: the flags that choose the IPv4 interface
choose for IPv6 too (upstream #2081: they do not there)."""

from ipaddress import IPv4Address, IPv6Address

from pyflannel.kernel.iface import Address, Interface, ipv4_patterns, select_ext_iface, with_ipv6

ETH0 = Interface(
    "eth0",
    2,
    1500,
    [Address(IPv4Address("192.0.2.10"), 24), Address(IPv6Address("2001:db8:1::10"), 64)],
)
ETH1 = Interface("eth1", 3, 9000, [Address(IPv6Address("2001:db8:2::10"), 64)])
INTERFACES = [ETH0, ETH1]


def _ext():
    return select_ext_iface(INTERFACES, default_route_index=2)


def test_without_flags_the_ipv4_interfaces_address_as_upstream():
    ext = with_ipv6(_ext(), INTERFACES)
    assert (ext.iface_addr6, ext.public_ipv6, ext.name6, ext.v6_index) == (
        IPv6Address("2001:db8:1::10"),
        IPv6Address("2001:db8:1::10"),
        "",
        2,
    )


def test_a_regex_matching_an_ipv6_address_chooses_it_and_its_interface():
    ext = with_ipv6(_ext(), INTERFACES, iface_regex=["^2001:db8:2:"])
    assert ext.iface_addr6 == IPv6Address("2001:db8:2::10") == ext.public_ipv6
    assert (ext.name6, ext.v6_index, ext.v6_mtu) == ("eth1", 3, 9000)
    assert (ext.name, ext.iface_addr) == ("eth0", IPv4Address("192.0.2.10"))  # IPv4 unchanged
    assert "2001:db8:2::10 on eth1" in ext.describe()


def test_an_ipv6_only_pattern_leaves_the_ipv4_choice_to_the_default_route():
    assert ipv4_patterns(INTERFACES, ["^2001:db8:2:"]) == ()
    assert ipv4_patterns(INTERFACES, ["^192\\.0\\.2\\.", "^2001:db8:2:"]) == (
        "^192\\.0\\.2\\.",
        "^2001:db8:2:",
    )
    assert ipv4_patterns(INTERFACES, ["^nothing"]) == ("^nothing",)  # the error says so


def test_an_ipv6_can_reach_target_chooses_the_routes_source():
    ext = with_ipv6(_ext(), INTERFACES, can_reach6=(3, IPv6Address("2001:db8:2::10")))
    assert (ext.iface_addr6, ext.name6) == (IPv6Address("2001:db8:2::10"), "eth1")


def test_public_ipv6_is_still_what_is_advertised():
    ext = with_ipv6(_ext(), INTERFACES, IPv6Address("2001:db8:9::1"), iface_regex=["^2001:db8:2:"])
    assert ext.iface_addr6 == IPv6Address("2001:db8:2::10")
    assert ext.public_ipv6 == IPv6Address("2001:db8:9::1")
