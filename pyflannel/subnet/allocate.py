"""Which subnet a node should claim: reuse, previous, or a random free one (local_manager.go).

Pure: the caller lists the leases, this module decides, the caller writes conditionally and
calls again (with the lost subnet excluded) if another node won the race.
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

CANDIDATES = 100  # upstream picks among the first 100 free subnets


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
    free = [s for s in free_subnets(cfg, live) if s not in excluded]
    if not free:
        raise OutOfSubnets(
            f"out of subnets: all {cfg.subnet_count} /{cfg.subnet_len} subnets of {cfg.network} "
            f"({cfg.subnet_min} to {cfg.subnet_max}) are leased ({len(live)} leases in etcd)"
        )
    return Claim(rng.choice(free), "allocated", stale=tuple(stale), ipv6_subnet=subnet6)


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
    free = _free_slots(
        int(cfg.ipv6_subnet_min), int(cfg.ipv6_subnet_max), cfg.ipv6_subnet_len, 128, live
    )
    if not free:
        raise OutOfSubnets(
            f"out of IPv6 subnets: every /{cfg.ipv6_subnet_len} of {cfg.ipv6_network} "
            f"({cfg.ipv6_subnet_min} to {cfg.ipv6_subnet_max}) is leased"
        )
    return IPv6Network((IPv6Address(rng.choice(free)), cfg.ipv6_subnet_len))


def free_subnets(
    cfg: NetworkConfig, taken: Iterable[IPv4Network], limit: int = CANDIDATES
) -> list[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin up that overlap no taken subnet.

    Linear in the number of leases: leases no larger than SubnetLen block one slot each; the
    rare larger ones (hand-written) are checked as intervals.
    """
    free = _free_slots(int(cfg.subnet_min), int(cfg.subnet_max), cfg.subnet_len, 32, taken, limit)
    return [IPv4Network((address, cfg.subnet_len)) for address in free]


def _free_slots(
    first: int,
    last_address: int,
    length: int,
    bits: int,
    taken: Iterable[IPv4Network] | Iterable[IPv6Network],
    limit: int = CANDIDATES,
) -> list[int]:
    """The first ``limit`` free /``length`` network addresses from ``first`` up (either
    family: ``bits`` is its width)."""
    shift = bits - length
    blocked_slots: set[int] = set()
    blocked_ranges: list[tuple[int, int]] = []
    for subnet in taken:
        if subnet.prefixlen >= length:
            blocked_slots.add(int(subnet.network_address) >> shift)
        else:
            blocked_ranges.append(
                (int(subnet.network_address) >> shift, int(subnet.broadcast_address) >> shift)
            )
    free: list[int] = []
    slot, last = first >> shift, last_address >> shift
    while slot <= last and len(free) < limit:
        if slot not in blocked_slots and not any(lo <= slot <= hi for lo, hi in blocked_ranges):
            free.append(slot << shift)
        slot += 1
    return free
