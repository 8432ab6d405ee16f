"""Subnet keys: upstream's format and its invalid examples (pkg/subnet/subnet_test.go)."""

from ipaddress import IPv4Network, IPv6Network

import pytest

from pyflannel.subnet.key import parse_subnet_key, subnet_key


def test_ipv4_key_round_trip():
    key = subnet_key(IPv4Network("10.5.34.0/24"))
    assert key == "10.5.34.0-24"
    assert parse_subnet_key(key) == (IPv4Network("10.5.34.0/24"), None)


def test_dual_stack_key_round_trip():
    sn, sn6 = IPv4Network("10.12.13.0/24"), IPv6Network("fd00:12:13::/56")
    key = subnet_key(sn, sn6)
    assert key == "10.12.13.0-24&fd00:12:13::-56"
    assert parse_subnet_key(key) == (sn, sn6)


def test_key_is_found_inside_the_full_etcd_key():
    assert parse_subnet_key("/coreos.com/network/subnets/10.1.5.0-24") == (
        IPv4Network("10.1.5.0/24"),
        None,
    )


@pytest.mark.parametrize(
    "key",
    [
        "10",
        "10.12.13.0",
        "10.12.13-24",
        "10.12.13.300-24",
        "10.12.13.0-24hi",
        "&2001::-56",
        "10.12.13.0-24&:12:13:-56",
        "10.12.13.0-24&20011::-56",
        "10.12.13.0-24&2001-56",
        "10.12.13.0-24&2001::",
        "10.12.13.0-24&2001::-56hi",
    ],
)
def test_upstream_invalid_keys_are_rejected(key):
    assert parse_subnet_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "10.1.2.0-32",  # 5-bit prefix: 0..31 only, as upstream
        "10.1.2.0-24&fd00::-128",  # 7-bit IPv6 prefix
        "10.1.2.3-24",  # host bits set: not a subnet flannel could have written
        "10.1.2.0-24&FD00::-56",  # upstream's regex takes lowercase hex only
        "\u0661\u0660.1.2.0-24",  # non-ASCII (Arabic-Indic) digits
        "010.1.2.0-24",  # leading zeros are ambiguous (octal?), rejected like Go
    ],
)
def test_other_near_misses_are_rejected(key):
    assert parse_subnet_key(key) is None
