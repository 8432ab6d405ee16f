"""Which encapsulation a VXLAN peer is sent over, as pure decisions from each probe round.

A peer whose lease offers pyflannel's UDP encapsulation (``UDPPort``) has two paths from this
node: VXLAN through ``flannel.<VNI>`` and UDP through ``flannel0``. Each round the healer
probes the VXLAN path (an ICMP echo and a TCP SYN, sent out of the VXLAN device whatever the
route says), and the UDP path when VXLAN failed or the peer is on UDP. The rule:

- on VXLAN, ``FAIL_ROUNDS`` rounds in a row where VXLAN fails (no echo answered, or no TCP
  answer: the checksum-offload case) while UDP answers both move the peer to UDP (one lost
  round, e.g. while a device is being repaired, moves nothing); UDP is probed only then;
- when UDP does not answer either, the peer is *tried* on UDP: the answers come back over the
  peer's own choice, so with VXLAN broken both ways neither side sees UDP answer until the
  other has moved. A try that UDP does not confirm in the next round ends back on VXLAN, and
  the next try waits 1, 2, 4 ... up to ``MAX_TRY_WAIT`` rounds (a peer that is down is not
  moved back and forth every round);
- on UDP, VXLAN must pass ``back_after`` rounds in a row to move back (2; doubled, up to 16,
  each time VXLAN fails again within ``DAMP_WINDOW`` of a return: a path that flaps is left on
  UDP longer instead of moving every round); if UDP itself fails while VXLAN passes, back now.

Each node decides for its own sending direction only; the receiving side accepts both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyflannel.ops.snapshot import HealView

FAIL_ROUNDS = 2  # VXLAN failing this many rounds in a row moves a peer
BACK_AFTER = 2  # clean VXLAN rounds in a row before a peer moves back
MAX_BACK_AFTER = 16
DAMP_WINDOW = 600.0  # seconds: VXLAN failing again this soon after a return doubles BACK_AFTER
MAX_TRY_WAIT = 32  # rounds between unconfirmed tries of UDP, at most


class Encap(enum.StrEnum):
    VXLAN = "vxlan"
    UDP = "udp"


@dataclass(frozen=True)
class PathResult:
    """One round's probes of one path: was an echo answered, was a TCP SYN answered."""

    icmp: bool
    tcp: bool

    @property
    def ok(self) -> bool:
        return self.icmp and self.tcp

    @property
    def failure(self) -> str:
        """What failed, in words ("" if nothing did)."""
        if not self.icmp:
            return "blocked"
        return "" if self.tcp else "passes ICMP but not TCP"


class Move(enum.StrEnum):
    TO_UDP = "to udp"  # VXLAN fails, UDP answers
    TRY_UDP = "try udp"  # VXLAN fails, UDP does not answer yet
    CONFIRMED = "confirmed"  # a try that UDP answered
    TO_VXLAN = "to vxlan"


@dataclass
class PathChoice:
    """The encapsulation one peer is sent over, and why."""

    via: Encap = Encap.VXLAN
    since: float = 0.0  # wall clock of the last move (0: never moved)
    why: str = ""  # on UDP: what VXLAN did ("vxlan blocked", ...)
    trying: bool = False  # on UDP, not yet confirmed by an answer over it
    failed: int = 0  # VXLAN failures in a row while on VXLAN
    clean: int = 0  # clean VXLAN rounds in a row while on UDP
    back_after: int = BACK_AFTER
    returned_at: float | None = None
    try_wait: int = 1  # rounds the next unconfirmed try waits after one failed
    wait_left: int = 0
    moves: int = 0

    def wants_udp_probe(self, vxlan: PathResult) -> bool:
        """Probe UDP this round? When on it, and when VXLAN fails for the FAIL_ROUNDS-th
        round in a row."""
        return self.via is Encap.UDP or (not vxlan.ok and self.failed + 1 >= FAIL_ROUNDS)

    def observe(self, vxlan: PathResult, udp: PathResult | None, now: float) -> Move | None:
        """One round's results; the move it makes, if any."""
        if self.via is Encap.VXLAN:
            return self._on_vxlan(vxlan, udp, now)
        if self.trying:
            return self._trying(vxlan, udp, now)
        if not vxlan.ok:
            self.clean = 0
            return None
        self.clean += 1
        if self.clean >= self.back_after or (udp is not None and not udp.ok):
            return self._back(now)
        return None

    def _on_vxlan(self, vxlan: PathResult, udp: PathResult | None, now: float) -> Move | None:
        if vxlan.ok:
            self.try_wait, self.wait_left, self.failed = 1, 0, 0
            return None
        self.failed += 1
        if udp is None or self.failed < FAIL_ROUNDS:
            return None
        if not udp.ok and self.wait_left > 0:
            self.wait_left -= 1
            return None
        recent = self.returned_at is not None and now - self.returned_at < DAMP_WINDOW
        self.back_after = min(self.back_after * 2, MAX_BACK_AFTER) if recent else BACK_AFTER
        self.why = f"vxlan {vxlan.failure}"
        self.via, self.since, self.clean, self.trying = Encap.UDP, now, 0, not udp.ok
        self.failed = 0
        self.moves += 1
        return Move.TRY_UDP if self.trying else Move.TO_UDP

    def _trying(self, vxlan: PathResult, udp: PathResult | None, now: float) -> Move | None:
        if udp is not None and udp.ok:
            self.trying = False
            self.try_wait, self.wait_left = 1, 0
            return Move.CONFIRMED
        self.wait_left = self.try_wait
        self.try_wait = min(self.try_wait * 2, MAX_TRY_WAIT)
        return self._back(now, returned=False)

    def _back(self, now: float, returned: bool = True) -> Move:
        """Back on VXLAN; ``returned``: from a confirmed move (a failed try is not a flap)."""
        self.via, self.since, self.clean, self.trying = Encap.VXLAN, now, 0, False
        if returned:
            self.returned_at = now
        self.moves += 1
        return Move.TO_VXLAN

    def view(self) -> HealView:

        return HealView(
            via=self.via.value,
            since=self.since,
            why=self.why if self.via is Encap.UDP else "",
            trying=self.trying,
            clean_rounds=self.clean,
            back_after=self.back_after,
            moves=self.moves,
        )
