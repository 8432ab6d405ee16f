"""Choosing a subnet: reuse by public IP, previous subnet, random free one; exhaustion."""

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import OutOfSubnets
from pyflannel.subnet.allocate import choose_subnet
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import Lease, LeaseAttrs

CFG = parse_network_config('{"Network": "10.1.0.0/16", "SubnetLen": 24}')
ME = IPv4Address("198.51.100.1")


def lease(subnet: str, owner: str = "198.51.100.9", rev: int = 5) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(owner)))


def picks(cfg, leases, seeds=range(300), **kw) -> set[IPv4Network]:
    return {choose_subnet(cfg, leases, ME, rng=random.Random(s), **kw).subnet for s in seeds}


def test_a_new_subnet_is_aligned_and_inside_subnet_min_and_max():
    cfg = parse_network_config(
        '{"Network": "10.1.0.0/16", "SubnetMin": "10.1.8.0", "SubnetMax": "10.1.11.0"}'
    )
    assert picks(cfg, []) == {IPv4Network(f"10.1.{i}.0/24") for i in (8, 9, 10, 11)}


def test_a_new_subnet_overlaps_no_lease():
    cfg = parse_network_config('{"Network": "10.1.0.0/20", "SubnetLen": 24}')  # 15 subnets
    taken = [
        lease("10.1.1.0/24"),
        lease("10.1.2.128/25"),
        lease("10.1.4.0/23"),
        lease("10.1.8.0/22"),
    ]
    free = {IPv4Network(f"10.1.{i}.0/24") for i in (3, 6, 7, 12, 13, 14, 15)}
    assert picks(cfg, taken) == free


def test_a_new_subnet_is_drawn_from_the_whole_range_not_the_first_free_ones():
    # upstream draws among the first 100 free subnets: nodes booting together collide
    chosen = picks(CFG, [], seeds=range(2000))
    assert len(chosen) > 240  # of 255
    assert max(chosen) == IPv4Network("10.1.255.0/24")


def test_a_thousand_nodes_choosing_from_one_listing_rarely_collide():
    cfg = parse_network_config('{"Network": "10.0.0.0/12", "SubnetLen": 26}')  # 16,383 subnets
    existing = [lease(str(s)) for s in picks(cfg, [], seeds=range(500))]
    chosen = [
        choose_subnet(cfg, existing, ME, rng=random.Random(10_000 + n)).subnet for n in range(1000)
    ]
    collisions = len(chosen) - len(set(chosen))
    assert collisions < 60  # ~1000^2 / (2 x 15,900) = 31 expected; first 100 free: ~900
    assert not {s for s in chosen} & {e.subnet for e in existing}


def test_a_nearly_full_network_still_finds_its_last_free_subnet():
    cfg = parse_network_config('{"Network": "10.0.0.0/8", "SubnetLen": 24}')  # 65,535 subnets
    taken = [lease("10.0.1.0/24"), lease("10.0.2.0/23"), lease("10.0.4.0/22"), lease("10.0.8.0/21")]
    taken += [lease("10.0.16.0/20"), lease("10.0.32.0/19"), lease("10.0.64.0/18")]
    taken += [lease("10.0.128.0/17")] + [lease(f"10.{i}.0.0/16") for i in range(1, 256) if i != 77]
    taken += [lease(f"10.77.{i}.0/24") for i in range(256) if i != 200]
    assert picks(cfg, taken, seeds=range(20)) == {IPv4Network("10.77.200.0/24")}


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
