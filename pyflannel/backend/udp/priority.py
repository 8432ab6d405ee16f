"""The UDP data path's CPU priority (``--udp-priority``): a packet thread that wakes when a
packet arrives should run at once, not after a busy neighbour's time slice.

``realtime``: each worker's packet thread (only it: not the daemon, not the worker's control
thread) runs under ``SCHED_RR`` at priority 1, the lowest real-time priority, so it preempts
ordinary processes the moment a packet wakes it. Bounded as the kernel bounds its own packet
work (softirqs run at once until they take too long, then ``ksoftirqd`` carries on at ordinary
priority): the worker watches its packet thread's CPU time every WINDOW seconds, and a thread
that used more than BUDGET of a core (a fifth) in a window goes back to ordinary scheduling until a
window shows it under half the budget. A saturated data path therefore competes like any
process, and only light traffic (the latency-bound kind: RPCs, DNS, pings) is served ahead of
the neighbours. The kernel's own real-time throttle (``kernel.sched_rt_runtime_us``, 95 % of
each second) stays below that as a last bound. Needs ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO``
of at least 1 (the unit's ``LimitRTPRIO=1``); refused (a container, no limit): said once, and
the path runs at ordinary priority.

``normal``: ordinary scheduling, as upstream's flanneld.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

REALTIME, NORMAL = "realtime", "normal"
CHOICES = (REALTIME, NORMAL)
RT_PRIORITY = 1
WINDOW = 0.5  # seconds between looks at the packet thread's CPU time
BUDGET = 0.2  # share of one core the packet thread may use at real-time priority


def next_realtime(realtime: bool, share: float, budget: float = BUDGET) -> bool:
    """Whether the packet thread should be real-time for the next window, given whether it
    is now and the share of a core it used in the last one (hysteresis: back only under half
    the budget, so a path hovering at the budget does not flap every window)."""
    if realtime:
        return share <= budget
    return share < budget / 2


@dataclass
class PriorityState:
    """What the packet thread runs at, for the status document."""

    mode: str = NORMAL
    realtime: bool = False
    demotions: int = 0  # windows that ended real time for using too much CPU
    refused: str = ""  # why the kernel would not make it real time

    def snapshot(self) -> dict:
        return {
            "mode": self.mode,
            "realtime": self.realtime,
            "demotions": self.demotions,
            "refused": self.refused,
        }


class PacketThreadPriority:
    """Raises the packet thread (``enter`` runs in it) and keeps it within its budget
    (``watch`` runs in another thread of the worker, every WINDOW seconds)."""

    def __init__(self, mode: str):
        self.state = PriorityState(mode=mode)
        self._thread: threading.Thread | None = None
        self._tid = 0
        self._cpu = 0.0
        self._at = 0.0

    def enter(self) -> None:
        """Called by the packet thread as it starts."""
        self._thread = threading.current_thread()
        self._tid = threading.get_native_id()
        self._cpu, self._at = time.thread_time(), time.monotonic()
        if self.state.mode == REALTIME:
            self._set(True)

    def watch(self) -> None:
        """One look at the packet thread's CPU time since the last: within budget or not."""
        if self.state.mode != REALTIME or self.state.refused or self._thread is None:
            return
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:
            return
        now = time.monotonic()
        share = (cpu - self._cpu) / max(now - self._at, 1e-3)
        self._cpu, self._at = cpu, now
        wanted = next_realtime(self.state.realtime, share)
        if wanted != self.state.realtime:
            if not wanted:
                self.state.demotions += 1
                log.debug("udp data path: %.0f %% of a core: ordinary priority", share * 100)
            self._set(wanted)

    def _set(self, realtime: bool) -> None:
        policy = os.SCHED_RR if realtime else os.SCHED_OTHER
        try:
            os.sched_setscheduler(self._tid, policy, os.sched_param(RT_PRIORITY if realtime else 0))
        except OSError as e:
            self.state.refused = f"SCHED_RR refused: {e.strerror}"
            log.warning(
                "udp data path: real-time priority refused (%s): it runs at ordinary priority "
                "(needs CAP_SYS_NICE or LimitRTPRIO=1)",
                e.strerror,
            )
            return
        self.state.realtime = realtime
