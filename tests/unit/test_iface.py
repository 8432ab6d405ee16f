"""External interface selection (upstream ipmatch semantics)."""

from ipaddress import IPv4Address

import pytest

from pyflannel.errors import InterfaceError
from pyflannel.kernel.iface import IFA_F_DEPRECATED, Address, Interface, select_ext_iface

LO = Interface("lo", 1, 65536, [Address(IPv4Address("127.0.0.1"), 8, 254)])
ETH0 = Interface(
    "eth0",
    2,
    1500,
    [Address(IPv4Address("169.254.3.3"), 16, 253), Address(IPv4Address("198.51.100.1"), 24)],
)
ETH1 = Interface("eth1", 3, 9000, [Address(IPv4Address("203.0.113.7"), 24)])
ALL = [LO, ETH0, ETH1]


def test_default_route_interface_and_its_global_address():
    ext = select_ext_iface(ALL, default_route_index=2)
    assert (ext.name, ext.iface_addr, ext.public_ip, ext.mtu) == (
        "eth0",
        IPv4Address("198.51.100.1"),
        IPv4Address("198.51.100.1"),
        1500,
    )


def test_iface_by_name_and_by_ip_first_match_wins():
    assert select_ext_iface(ALL, iface=["nope", "eth1"], default_route_index=2).name == "eth1"
    ext = select_ext_iface(ALL, iface=["203.0.113.7"])
    assert (ext.name, ext.iface_addr) == ("eth1", IPv4Address("203.0.113.7"))


def test_iface_regex_matches_addresses_before_names():
    assert select_ext_iface(ALL, iface_regex=[r"^203\."]).name == "eth1"
    assert select_ext_iface(ALL, iface_regex=[r"^eth0$"]).name == "eth0"


def test_public_ip_is_advertised_and_must_be_local_without_iface():
    ext = select_ext_iface(ALL, public_ip=IPv4Address("203.0.113.7"))
    assert ext.name == "eth1"
    ext = select_ext_iface(ALL, iface=["eth0"], public_ip=IPv4Address("192.0.2.200"))
    assert (ext.iface_addr, ext.public_ip) == (
        IPv4Address("198.51.100.1"),
        IPv4Address("192.0.2.200"),
    )
    with pytest.raises(InterfaceError, match="not an address of any interface"):
        select_ext_iface(ALL, public_ip=IPv4Address("192.0.2.200"))


def test_deprecated_addresses_are_not_used():
    dep = Interface("eth2", 4, 1500, [Address(IPv4Address("10.9.9.9"), 24, 0, IFA_F_DEPRECATED)])
    with pytest.raises(InterfaceError, match="no interface matches --iface eth2"):
        select_ext_iface([dep], iface=["eth2"])


def test_errors_list_what_exists():
    with pytest.raises(InterfaceError) as e:
        select_ext_iface(ALL, iface=["wlan0"])
    assert "eth1[203.0.113.7]" in str(e.value)
    with pytest.raises(InterfaceError, match="no IPv4 default route"):
        select_ext_iface(ALL)
    with pytest.raises(InterfaceError, match="not a valid regex"):
        select_ext_iface(ALL, iface_regex=["("])
