"""VXLAN device: backend options, and when an existing device can be kept."""

import random
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from pyflannel.backend.vxlan.device import (
    VxlanConfig,
    VxlanSpec,
    incompatibilities,
    parse_vxlan_config,
    random_vtep_mac,
)
from pyflannel.errors import ConfigError
from pyflannel.kernel.links import Link, Vxlan

SPEC = VxlanSpec("flannel.1", 1, IPv4Address("198.51.100.1"), 2, 0, False, False, 1450)
VXLAN = Vxlan(1, IPv4Address("198.51.100.1"), underlay=2, port=8472)
LINK = Link(5, "flannel.1", "vxlan", "02:11:22:33:44:55", 1450, up=True, vxlan=VXLAN)


def with_vxlan(**change) -> Link:
    return replace(LINK, vxlan=replace(VXLAN, **change))


def test_backend_defaults():
    assert parse_vxlan_config({"Type": "vxlan"}) == VxlanConfig(vni=1, port=0, mtu=0)


def test_backend_keys_are_case_insensitive():
    cfg = parse_vxlan_config({"vni": 42, "PORT": 4789, "mtu": 1400, "directrouting": True})
    assert (cfg.vni, cfg.port, cfg.mtu, cfg.direct_routing) == (42, 4789, 1400, True)


@pytest.mark.parametrize(
    "backend, message",
    [
        ({"VNI": 1 << 24}, "VNI must be an integer"),
        ({"VNI": "1"}, "VNI must be an integer"),
        ({"Port": 70000}, "Port must be"),
        ({"MTU": -1}, "MTU must be"),
        ({"DirectRouting": "yes"}, "DirectRouting must be true or false"),
    ],
)
def test_bad_backend_options_are_config_errors(backend, message):
    with pytest.raises(ConfigError, match=message):
        parse_vxlan_config(backend)


def test_a_matching_device_is_kept():
    assert incompatibilities(LINK, SPEC) == []


def test_default_port_matches_kernel_default():
    assert incompatibilities(with_vxlan(port=8472), replace(SPEC, port=0)) == []
    assert incompatibilities(with_vxlan(port=8472), replace(SPEC, port=4789)) == [
        "port 8472 instead of 4789"
    ]


def test_a_different_mtu_is_fixed_in_place_not_a_reason_to_recreate():
    assert incompatibilities(replace(LINK, mtu=1300), SPEC) == []


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"vni": 2}, "VNI 2 instead of 1"),
        ({"local": IPv4Address("198.51.100.9")}, "local address"),
        ({"underlay": 7}, "underlay link index 7"),
        ({"learning": True}, "learning on"),
        ({"gbp": True}, "GBP on"),
    ],
)
def test_incompatible_devices_are_recreated(change, reason):
    reasons = incompatibilities(with_vxlan(**change), SPEC)
    assert reasons and reason in reasons[0]


def test_a_device_of_another_kind_is_recreated():
    assert incompatibilities(replace(LINK, kind="bridge", vxlan=None), SPEC) == [
        "it is a bridge link"
    ]


def test_what_the_kernel_leaves_unset_is_not_compared():
    assert incompatibilities(with_vxlan(underlay=0, local=None, port=0), SPEC) == []


def test_vtep_macs_are_locally_administered_unicast():
    rng = random.Random(0)
    for _ in range(200):
        first = int(random_vtep_mac(rng).split(":")[0], 16)
        assert first & 0x02 and not first & 0x01
