"""Choosing a subnet: reuse by public IP, previous subnet, random free one; exhaustion."""

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import OutOfSubnets
from pyflannel.subnet.allocate import choose_subnet, fits_config, free_subnets
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import Lease, LeaseAttrs

CFG = parse_network_config('{"Network": "10.1.0.0/16", "SubnetLen": 24}')
ME = IPv4Address("198.51.100.1")


def lease(subnet: str, owner: str = "198.51.100.9", rev: int = 5) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(owner)))


def test_free_subnets_skip_the_first_subnet_and_are_aligned():
    free = free_subnets(CFG, [], limit=3)
    assert free == [
        IPv4Network("10.1.1.0/24"),
        IPv4Network("10.1.2.0/24"),
        IPv4Network("10.1.3.0/24"),
    ]


def test_free_subnets_stop_at_subnet_max():
    cfg = parse_network_config('{"Network": "10.1.0.0/16", "SubnetMax": "10.1.3.0"}')
    assert free_subnets(cfg, []) == [IPv4Network(f"10.1.{i}.0/24") for i in (1, 2, 3)]


def test_free_subnets_skip_every_overlapping_lease():
    taken = [IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.128/25"), IPv4Network("10.1.4.0/23")]
    assert free_subnets(CFG, taken, limit=3) == [
        IPv4Network("10.1.3.0/24"),
        IPv4Network("10.1.6.0/24"),
        IPv4Network("10.1.7.0/24"),
    ]


def test_free_subnets_collects_at_most_100_candidates():
    assert len(free_subnets(CFG, [])) == 100


def test_reuses_the_lease_holding_our_public_ip():
    mine = lease("10.1.7.0/24", owner=str(ME))
    claim = choose_subnet(
        CFG, [lease("10.1.3.0/24"), mine], ME, previous=IPv4Network("10.1.9.0/24")
    )
    assert (claim.subnet, claim.reason, claim.existing) == (mine.subnet, "reuse", mine)


def test_our_lease_outside_the_configured_range_is_stale_and_replaced():
    cfg = parse_network_config('{"Network": "10.1.0.0/16", "SubnetLen": 25}')
    mine = lease("10.1.7.0/24", owner=str(ME))
    claim = choose_subnet(cfg, [mine], ME, rng=random.Random(1))
    assert claim.stale == (mine,)
    assert claim.reason == "allocated" and claim.subnet.prefixlen == 25


def test_previous_subnet_is_reused_when_free_and_valid():
    claim = choose_subnet(CFG, [lease("10.1.3.0/24")], ME, previous=IPv4Network("10.1.9.0/24"))
    assert (claim.subnet, claim.reason, claim.existing) == (
        IPv4Network("10.1.9.0/24"),
        "previous",
        None,
    )


@pytest.mark.parametrize(
    "previous",
    [
        "10.1.3.0/24",  # leased by another node
        "10.1.3.0/25",  # overlaps a lease (upstream only checks equality)
        "10.2.9.0/24",  # outside the network
        "10.1.0.0/24",  # below SubnetMin
        "10.1.9.0/25",  # wrong length
    ],
)
def test_previous_subnet_is_ignored_when_taken_or_invalid(previous):
    claim = choose_subnet(
        CFG, [lease("10.1.3.0/24")], ME, previous=IPv4Network(previous), rng=random.Random(3)
    )
    assert claim.reason == "allocated"
    assert claim.subnet != IPv4Network("10.1.3.0/24")


def test_allocation_is_random_among_free_candidates():
    picks = {choose_subnet(CFG, [], ME, rng=random.Random(seed)).subnet for seed in range(30)}
    assert len(picks) > 10
    assert all(fits_config(CFG, p) for p in picks)


def test_excluded_subnets_are_not_chosen_again():
    cfg = parse_network_config('{"Network": "10.1.0.0/22", "SubnetLen": 24}')  # 3 subnets
    claim = choose_subnet(
        cfg, [], ME, exclude=[IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24")]
    )
    assert claim.subnet == IPv4Network("10.1.3.0/24")


def test_exhaustion_names_the_network_and_the_count():
    cfg = parse_network_config('{"Network": "10.1.0.0/22", "SubnetLen": 24}')
    taken = [lease(f"10.1.{i}.0/24") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets) as e:
        choose_subnet(cfg, taken, ME)
    assert str(e.value) == (
        "out of subnets: all 3 /24 subnets of 10.1.0.0/22 (10.1.1.0 to 10.1.3.0) are leased "
        "(3 leases in etcd)"
    )
