"""Lease values: byte-exact Go json.Marshal output, tolerant decoding."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from pyflannel.subnet.lease import LeaseAttrs, LeaseDecodeError, go_json


def test_udp_lease_is_byte_exact():
    # pkg/subnet/etcd/registry_test.go expects exactly these bytes.
    assert (
        LeaseAttrs(IPv4Address("1.2.3.4")).to_json() == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    )


def test_vxlan_lease_is_byte_exact():
    attrs = LeaseAttrs(
        IPv4Address("192.168.64.3"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
    )
    assert attrs.to_json() == (
        b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )


def test_dual_stack_fields_come_in_upstream_order():
    attrs = LeaseAttrs(
        IPv4Address("1.2.3.4"),
        IPv6Address("fd00::1"),
        "vxlan",
        {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"},
        {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:00"},
    )
    assert attrs.to_json() == (
        b'{"PublicIP":"1.2.3.4","PublicIPv6":"fd00::1","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}}'
    )


def test_round_trip():
    attrs = LeaseAttrs(
        IPv4Address("10.0.0.1"), None, "vxlan", {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}
    )
    assert LeaseAttrs.from_json(attrs.to_json()) == attrs


def test_go_escapes_html_characters_like_json_marshal():
    assert go_json({"a": "<&>\u2028"}) == b'{"a":"\\u003c\\u0026\\u003e\\u2028"}'


def test_decoding_ignores_case_and_unknown_keys():
    attrs = LeaseAttrs.from_json(
        b'{"publicip":"1.2.3.4","BACKENDTYPE":"host-gw","Extra":[1,2],"publicIPv6":null}'
    )
    assert attrs == LeaseAttrs(IPv4Address("1.2.3.4"), backend_type="host-gw")


def test_missing_public_ip_decodes_as_unspecified():
    assert LeaseAttrs.from_json(b"{}").public_ip == IPv4Address("0.0.0.0")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"string"',
        b'{"PublicIP": 17}',
        b'{"PublicIP": "1.2.3"}',
        b'{"PublicIP": "fd00::1"}',
        b'{"PublicIP": "1.2.3.4", "PublicIPv6": "1.2.3.4"}',
        b'{"PublicIP": "1.2.3.4", "BackendType": 3}',
        b"\xff\xfe",
    ],
)
def test_junk_values_raise_a_decode_error(raw):
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json(raw)
