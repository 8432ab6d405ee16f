"""What the probes of one peer say, as pure data: reachable or not, RTT, loss, and the MTU
black hole (small probes answered, full-size ones lost), with the time of the last change.

The rule the verdicts follow (documented in the README):
- UNREACHABLE: none of the last ``DECIDE`` small probes was answered;
- BLACK HOLE: small probes answered, but none of the last ``DECIDE`` full-size ones;
- TCP BROKEN: ICMP passes, but the last ``DECIDE`` TCP probes (a SYN to a closed port of the
  peer's overlay address, which its kernel answers with a RST) got no answer: the case of
  flannel's most reported VXLAN bug (connections stalling ~63 s through NAT and checksum
  offload on flannel.1; upstream #1279, #1282, #2152);
- LOSSY: reachable, but more than ``LOSSY_FRACTION`` of the window's small probes lost (judged
  once ``LOSSY_AFTER`` of them were sent: the first probe of a new peer may race its ARP);
- OK otherwise; UNKNOWN until ``DECIDE`` probes of each kind have been sent.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

WINDOW = 20  # probes of each kind remembered per peer
DECIDE = 3  # consecutive results that decide a state
LOSSY_FRACTION = 0.2
LOSSY_AFTER = 10


class PeerHealth(enum.StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    LOSSY = "lossy"
    BLACK_HOLE = "mtu black hole"
    TCP_BROKEN = "tcp broken"
    UNREACHABLE = "unreachable"


@dataclass
class PathRecord:
    """Probe results of one peer: RTTs in ms, None for a probe that was lost."""

    small: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    full: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    tcp: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    state: PeerHealth = PeerHealth.UNKNOWN
    since: float = 0.0  # wall clock of the last change

    def add(self, kind: str, rtt_ms: float | None, now: float) -> PeerHealth | None:
        """Record one result; the new state if it changed (log it), else None."""
        {"small": self.small, "full": self.full, "tcp": self.tcp}[kind].append(rtt_ms)
        new = judge(list(self.small), list(self.full), list(self.tcp))
        if new is self.state:
            return None
        self.state, self.since = new, now
        return new

    @property
    def loss(self) -> float:
        return _loss(list(self.small))

    @property
    def rtt_median(self) -> float | None:
        answered = [r for r in self.small if r is not None]
        import statistics  # (~3 ms of imports the daemon's start need not pay)

        return statistics.median(answered) if answered else None

    @property
    def rtt_max(self) -> float | None:
        answered = [r for r in list(self.small)[-DECIDE * 2 :] if r is not None]
        return max(answered) if answered else None


def _loss(results: list[float | None]) -> float:
    return sum(r is None for r in results) / len(results) if results else 0.0


def judge(
    small: list[float | None], full: list[float | None], tcp: list[float | None] | None = None
) -> PeerHealth:
    if len(small) < DECIDE or len(full) < DECIDE:
        return PeerHealth.UNKNOWN
    if all(r is None for r in small[-DECIDE:]):
        return PeerHealth.UNREACHABLE
    if all(r is None for r in full[-DECIDE:]):
        return PeerHealth.BLACK_HOLE
    if tcp and len(tcp) >= DECIDE and all(r is None for r in tcp[-DECIDE:]):
        return PeerHealth.TCP_BROKEN
    if len(small) >= LOSSY_AFTER and _loss(small) > LOSSY_FRACTION:
        return PeerHealth.LOSSY
    return PeerHealth.OK


def explain(state: str, subnet: str, public_ip: str, mtu: int, loss: float = 0.0) -> str:
    """What is wrong, in words a person at 2 AM acts on."""
    if state == PeerHealth.UNREACHABLE:
        return (
            f"peer {subnet} at {public_ip} does not answer through the overlay: check that it "
            "runs, and that the underlay passes its encapsulation (firewall, routes)"
        )
    if state == PeerHealth.BLACK_HOLE:
        return (
            f"full-size packets ({mtu} bytes) to {subnet} at {public_ip} are lost, small ones "
            "pass: an MTU black hole on the path; check the underlay MTU on both nodes"
        )
    if state == PeerHealth.TCP_BROKEN:
        return (
            f"ICMP to {subnet} at {public_ip} passes but TCP through the overlay does not: "
            "check checksum offload on the VXLAN device (ethtool -K flannel.1 "
            "tx-checksum-ip-generic off; see `pyflannel doctor`) and NAT on the path"
        )
    if state == PeerHealth.LOSSY:
        return f"peer {subnet} at {public_ip}: {loss:.0%} of the probes lost"
    return ""
