"""The leaders a node has seen its etcd cluster elect (pure): every status answer names the
leader; the idle watch asks every second, so leader changes cost nothing extra to count."""

from __future__ import annotations

from collections import deque

WINDOW = 3600.0  # seconds: status shows the changes of the last hour


class LeaderLog:
    def __init__(self) -> None:
        self.leader = 0  # the last leader named (0: none known yet)
        self.changes: deque[float] = deque()  # wall clock of each change seen

    def observe(self, leader: int, now: float) -> bool:
        """Record a status answer's leader; True if it is a new one. An answer without a
        leader (an election under way, a member cut off) is not a change by itself: the
        change is counted when the next leader is named."""
        if not leader or leader == self.leader:
            return False
        changed = self.leader != 0
        self.leader = leader
        if changed:
            self.changes.append(now)
        self._forget_before(now - WINDOW)
        return changed

    def changes_within(self, now: float, seconds: float = WINDOW) -> int:
        self._forget_before(now - WINDOW)
        return sum(1 for t in self.changes if t >= now - seconds)

    def _forget_before(self, cutoff: float) -> None:
        while self.changes and self.changes[0] < cutoff:
            self.changes.popleft()
