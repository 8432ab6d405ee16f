"""MTU arithmetic: underlay MTU minus the encapsulation's overhead."""

import pytest

from pyflannel.backend.mtu import overlay_mtu


@pytest.mark.parametrize(
    "backend, link, expected",
    [
        ("vxlan", 1500, 1450),
        ("vxlan", 9000, 8950),
        ("vxlan", 1400, 1350),
        ("udp", 1500, 1472),
        ("udp", 9000, 8972),
        ("host-gw", 1500, 1500),
    ],
)
def test_overlay_mtu(backend, link, expected):
    assert overlay_mtu(backend, link) == expected


def test_an_underlay_too_small_for_ipv4_is_an_error():
    with pytest.raises(ValueError, match="IPv4 needs at least 68"):
        overlay_mtu("vxlan", 117)
    assert overlay_mtu("vxlan", 118) == 68
