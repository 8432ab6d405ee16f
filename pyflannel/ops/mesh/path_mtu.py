"""The MTU of one peer's path, fixed where it is smaller than the pod MTU: pure decisions.

A path the prober names an MTU black hole (small probes answered, full-size ones lost) is
measured with don't-fragment probes: a bisection between the largest size known to pass and
the smallest known to fail, ``MAX_PROBES`` probes at most, each waiting a few round trips.
The size found is fixed on that path only (ops/mesh/mtu_fixer.py does it): the route to the
peer's subnet carries it (``mtu lock``: the kernel answers a pod's too-large don't-fragment
packet with ICMP "fragmentation needed", so the pod's own PMTU discovery works), and TCP SYNs
to and from the subnet have their MSS clamped to it (connections work where a pod drops ICMP).
Every other peer keeps the pod MTU.

Back: the prober's full-size probe ignores the route's MTU (it measures the path, not the
fix), so every round is a re-probe at the pod MTU. When the path has carried the full size
for ``BACK_AFTER`` rounds in a row and the fix is at least ``hold`` seconds old, the fix goes.
A path that needs it again within ``DAMP_WINDOW`` of a return keeps its next fix twice as
long (up to ``MAX_HOLD``): a flapping path stays fixed instead of changing every minute, as
the path healer damps its moves.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROBES = 14  # per measurement: exact to the byte from 64 to 9000 (jumbo frames)
BACK_AFTER = 3  # full-size rounds in a row before a fix goes
HOLD = 30.0  # seconds a fix stays at least
MAX_HOLD = 3600.0
DAMP_WINDOW = 600.0  # seconds: fixed again this soon after a return doubles the hold
IPV4_MSS_OVERHEAD, IPV6_MSS_OVERHEAD = 40, 60  # IP + TCP headers


def mss_for(mtu: int, version: int) -> int:
    """The TCP MSS that fits a path of ``mtu`` bytes."""
    return mtu - (IPV6_MSS_OVERHEAD if version == 6 else IPV4_MSS_OVERHEAD)


@dataclass
class Bisection:
    """The largest size that passes, between ``passes`` (known to) and ``fails`` (known
    to fail), in at most ``limit`` probes."""

    passes: int
    fails: int
    limit: int = MAX_PROBES
    probes: int = 0

    def next_size(self) -> int | None:
        """The next size to probe; None when found (or out of probes)."""
        if self.fails - self.passes <= 1 or self.probes >= self.limit:
            return None
        return (self.passes + self.fails) // 2

    def record(self, size: int, passed: bool) -> None:
        self.probes += 1
        if passed:
            self.passes = max(self.passes, size)
        else:
            self.fails = min(self.fails, size)

    @property
    def found(self) -> int:
        """The largest size known to pass."""
        return self.passes


@dataclass
class PathFix:
    """One path's fix: its size, since when, what measuring it cost."""

    mtu: int
    since: float
    probes: int
    hold: float = HOLD
    full_rounds: int = 0  # rounds in a row the full size passed since


@dataclass
class Damping:
    """What a path's earlier fixes say about the next one."""

    hold: float = HOLD
    returned: float = 0.0  # when its last fix went


def next_hold(damping: Damping, now: float) -> float:
    """The hold of a new fix: doubled if the path needs fixing again soon after a return."""
    if damping.returned and now - damping.returned < DAMP_WINDOW:
        return min(damping.hold * 2, MAX_HOLD)
    return HOLD


def full_size_round(fix: PathFix, passed: bool, now: float) -> bool:
    """One more round's full-size probe of a fixed path; True: the fix can go."""
    fix.full_rounds = fix.full_rounds + 1 if passed else 0
    return fix.full_rounds >= BACK_AFTER and now - fix.since >= fix.hold


def describe(subnet: str, mtu: int, pod_mtu: int, version: int) -> str:
    """The one log line of a fix."""
    return (
        f"path to {subnet} carries {mtu} bytes, not {pod_mtu}: route MTU {mtu} and MSS "
        f"clamp {mss_for(mtu, version)} for that peer"
    )
