"""Which subnet a node should claim: reuse, previous, or a random free one (local_manager.go).

Pure: the caller lists the leases, this module decides, the caller writes conditionally and
calls again (with the lost subnet excluded) if another node won the race.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyflannel.errors import OutOfSubnets
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.owner import NodeIdentity, is_own_lease

CANDIDATES = 100  # upstream picks among the first 100 free subnets


@dataclass(frozen=True)
class Claim:
    """A subnet to write. ``existing`` is the lease being taken over (write only if its
    mod_revision is unchanged); None means create (write only if the key does not exist)."""

    subnet: IPv4Network
    reason: str  # "reuse" | "previous" | "allocated" | "conflict" (``existing``: the other's)
    existing: Lease | None = None
    stale: tuple[Lease, ...] = field(default=())  # our own leases that no longer fit the config


def fits_config(cfg: NetworkConfig, subnet: IPv4Network) -> bool:
    """Upstream's isSubnetConfigCompat: inside SubnetMin..SubnetMax with the configured length."""
    return (
        subnet.prefixlen == cfg.subnet_len
        and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max
    )


def choose_subnet(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: IPv4Address,
    previous: IPv4Network | None = None,
    exclude: Iterable[IPv4Network] = (),
    rng: random.Random | None = None,
    identity: NodeIdentity | None = None,
) -> Claim:
    """Decide what to claim; raise OutOfSubnets when nothing is free.

    With ``identity``, a lease carrying our public IP is reused only if it is plausibly
    ours (owner.py); if only other nodes' leases carry it, the claim is a "conflict"."""
    stale: list[Lease] = []
    foreign: Lease | None = None
    for lease in leases:  # etcd key order, like upstream: the first one of ours wins
        if lease.attrs.public_ip != public_ip:
            continue
        if identity is not None and not is_own_lease(lease, identity):
            foreign = foreign or lease
            continue
        if fits_config(cfg, lease.subnet):
            return Claim(lease.subnet, "reuse", existing=lease)
        stale.append(lease)
        break
    if foreign is not None:
        return Claim(foreign.subnet, "conflict", existing=foreign)
    excluded = set(exclude)
    live = [lease.subnet for lease in leases if lease not in stale]
    if (
        previous is not None
        and previous not in excluded
        and fits_config(cfg, previous)
        and not any(previous.overlaps(s) for s in live)
    ):
        return Claim(previous, "previous", stale=tuple(stale))
    free = [s for s in free_subnets(cfg, live) if s not in excluded]
    if not free:
        raise OutOfSubnets(
            f"out of subnets: all {cfg.subnet_count} /{cfg.subnet_len} subnets of {cfg.network} "
            f"({cfg.subnet_min} to {cfg.subnet_max}) are leased ({len(live)} leases in etcd)"
        )
    return Claim((rng or random).choice(free), "allocated", stale=tuple(stale))


def free_subnets(
    cfg: NetworkConfig, taken: Iterable[IPv4Network], limit: int = CANDIDATES
) -> list[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin up that overlap no taken subnet.

    Linear in the number of leases: leases no larger than SubnetLen block one slot each; the
    rare larger ones (hand-written) are checked as intervals.
    """
    shift = 32 - cfg.subnet_len
    blocked_slots: set[int] = set()
    blocked_ranges: list[tuple[int, int]] = []
    for subnet in taken:
        if subnet.prefixlen >= cfg.subnet_len:
            blocked_slots.add(int(subnet.network_address) >> shift)
        else:
            blocked_ranges.append(
                (int(subnet.network_address) >> shift, int(subnet.broadcast_address) >> shift)
            )
    free: list[IPv4Network] = []
    slot, last = int(cfg.subnet_min) >> shift, int(cfg.subnet_max) >> shift
    while slot <= last and len(free) < limit:
        if slot not in blocked_slots and not any(lo <= slot <= hi for lo, hi in blocked_ranges):
            free.append(IPv4Network((slot << shift, cfg.subnet_len)))
        slot += 1
    return free
