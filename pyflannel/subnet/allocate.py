"""Which subnet a node should claim: reuse, previous, or a random free one (local_manager.go).

Pure: the caller lists the leases, this module decides, the caller writes conditionally and
calls again (with the lost subnet excluded) if another node won the race.

A new subnet is drawn uniformly from every free subnet in SubnetMin..SubnetMax. Upstream draws
among the first 100 free ones, so nodes booting together collide: 1,000 at once lost 4.5
races each (bench/keepers.py). Any free subnet in range is a valid upstream lease.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.errors import OutOfSubnets
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.owner import NodeIdentity, is_own_lease

SAMPLES = 64  # random draws before walking to the next free slot (a nearly full network)


@dataclass(frozen=True)
class Claim:
    """A subnet to write. ``existing`` is the lease being taken over (write only if it is
    unchanged since it was read); None means create (write only if nobody holds it)."""

    subnet: IPv4Network
    reason: str  # "reuse" | "previous" | "allocated" | "conflict" (``existing``: the other's)
    existing: Lease | None = None
    stale: tuple[Lease, ...] = field(default=())  # our own leases that no longer fit the config
    ipv6_subnet: IPv6Network | None = None  # dual-stack: the IPv6 half (of ``existing`` too)


def fits_config(cfg: NetworkConfig, subnet: IPv4Network) -> bool:
    """Upstream's isSubnetConfigCompat: inside SubnetMin..SubnetMax with the configured length."""
    return (
        subnet.prefixlen == cfg.subnet_len
        and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max
    )


def fits_config6(cfg: NetworkConfig, subnet6: IPv6Network | None) -> bool:
    """The IPv6 half of isSubnetConfigCompat: none on an IPv4-only network; else inside
    IPv6SubnetMin..IPv6SubnetMax with IPv6SubnetLen."""
    if not cfg.enable_ipv6:
        return subnet6 is None
    assert cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None
    return (
        subnet6 is not None
        and subnet6.prefixlen == cfg.ipv6_subnet_len
        and cfg.ipv6_subnet_min <= subnet6.network_address <= cfg.ipv6_subnet_max
    )


def choose_subnet(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: IPv4Address,
    previous: IPv4Network | None = None,
    exclude: Iterable[IPv4Network] = (),
    rng: random.Random | None = None,
    identity: NodeIdentity | None = None,
    previous6: IPv6Network | None = None,
) -> Claim:
    """Decide what to claim; raise OutOfSubnets when nothing is free.

    With ``identity``, a lease carrying our public IP is reused only if it is plausibly
    ours (owner.py); if only other nodes' leases carry it, the claim is a "conflict".
    On a dual-stack network the IPv6 subnet is chosen the same way, independently: the
    previous one if it fits and is free, else a random free one."""
    stale: list[Lease] = []
    foreign: Lease | None = None
    for lease in leases:  # etcd key order, like upstream: the first one of ours wins
        if lease.attrs.public_ip != public_ip:
            continue
        if identity is not None and not is_own_lease(lease, identity):
            foreign = foreign or lease
            continue
        if fits_config(cfg, lease.subnet) and fits_config6(cfg, lease.ipv6_subnet):
            return Claim(lease.subnet, "reuse", existing=lease, ipv6_subnet=lease.ipv6_subnet)
        stale.append(lease)
        break
    if foreign is not None:
        return Claim(foreign.subnet, "conflict", existing=foreign)
    rng = rng or random.Random()
    excluded = set(exclude)
    others = [lease for lease in leases if lease not in stale]
    subnet6 = _choose_ipv6(cfg, others, previous6, rng) if cfg.enable_ipv6 else None
    live = [lease.subnet for lease in others]
    if (
        previous is not None
        and previous not in excluded
        and fits_config(cfg, previous)
        and not any(previous.overlaps(s) for s in live)
    ):
        return Claim(previous, "previous", stale=tuple(stale), ipv6_subnet=subnet6)
    free = random_free_slot(
        int(cfg.subnet_min), int(cfg.subnet_max), cfg.subnet_len, 32, [*live, *excluded], rng
    )
    if free is None:
        raise OutOfSubnets(
            f"out of subnets: all {cfg.subnet_count} /{cfg.subnet_len} subnets of {cfg.network} "
            f"({cfg.subnet_min} to {cfg.subnet_max}) are leased ({len(live)} leases in etcd)"
        )
    subnet = IPv4Network((free, cfg.subnet_len))
    return Claim(subnet, "allocated", stale=tuple(stale), ipv6_subnet=subnet6)


def _choose_ipv6(
    cfg: NetworkConfig, leases: Sequence[Lease], previous6: IPv6Network | None, rng: random.Random
) -> IPv6Network:
    live = [lease.ipv6_subnet for lease in leases if lease.ipv6_subnet is not None]
    if (
        previous6 is not None
        and fits_config6(cfg, previous6)
        and not any(previous6.overlaps(s) for s in live)
    ):
        return previous6
    assert cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None
    free = random_free_slot(
        int(cfg.ipv6_subnet_min), int(cfg.ipv6_subnet_max), cfg.ipv6_subnet_len, 128, live, rng
    )
    if free is None:
        raise OutOfSubnets(
            f"out of IPv6 subnets: every /{cfg.ipv6_subnet_len} of {cfg.ipv6_network} "
            f"({cfg.ipv6_subnet_min} to {cfg.ipv6_subnet_max}) is leased"
        )
    return IPv6Network((IPv6Address(free), cfg.ipv6_subnet_len))


def random_free_slot(
    first: int,
    last_address: int,
    length: int,
    bits: int,
    taken: Iterable[IPv4Network] | Iterable[IPv6Network],
    rng: random.Random,
) -> int | None:
    """The network address of a free /``length`` between ``first`` and ``last_address``
    (either family: ``bits`` is its width), drawn uniformly; None if every one is taken.

    Leases no larger than ``length`` block one slot each; the rare larger ones (hand-written)
    block a range. Cost: O(leases) to index them, then a few draws; only a nearly full network
    walks, from a random slot, jumping over taken ranges (at most one step per lease)."""
    shift = bits - length
    blocked: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for subnet in taken:
        if subnet.prefixlen >= length:
            blocked.add(int(subnet.network_address) >> shift)
        else:
            ranges.append(
                (int(subnet.network_address) >> shift, int(subnet.broadcast_address) >> shift)
            )
    low, high = first >> shift, last_address >> shift
    if high < low:
        return None

    def range_end(slot: int) -> int | None:
        """The last slot of a taken range holding ``slot``, if one does."""
        return next((hi for lo, hi in ranges if lo <= slot <= hi), None)

    for _ in range(SAMPLES):
        slot = rng.randint(low, high)
        if slot not in blocked and range_end(slot) is None:
            return slot << shift
    start = rng.randint(low, high)
    slot, wrapped = start, False
    while not (wrapped and slot >= start):
        end = range_end(slot)
        if end is None and slot not in blocked:
            return slot << shift
        slot = (end if end is not None else slot) + 1
        if slot > high:
            if wrapped:
                break
            slot, wrapped = low, True
    return None
