"""The overlay MTU follows the underlay: 9000 -> 8950, 1400 -> 1350, and full-size packets
with don't-fragment set cross the tunnel."""

import pytest

from .conftest import started_bed


@pytest.fixture(scope="module", params=[9000, 1400], ids=["jumbo-9000", "odd-1400"])
def bed(request):
    bed = started_bed(hosts=2, mtu=request.param)
    bed.underlay_mtu = request.param
    yield bed
    bed.close()


def test_subnet_env_and_device_carry_underlay_mtu_minus_50(bed):
    for node in bed.nodes:
        assert node.mtu == bed.underlay_mtu - 50
        assert node.ip_json("link", "show", "flannel.1")[0]["mtu"] == bed.underlay_mtu - 50


def test_a_dont_fragment_ping_of_the_full_overlay_mtu_crosses(bed):
    a, b = bed.nodes
    payload = bed.underlay_mtu - 50 - 28
    result = a.ping(b.pod_ip, count=2, interval=0.1, size=payload, dont_fragment=True)
    assert result.received == 2, result.output
