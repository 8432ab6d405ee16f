"""The UDP data path's CPU priority (``--udp-priority``): a packet thread that wakes when a
packet arrives should run at once, not after a busy neighbour's time slice.

``auto`` (the default): each worker's packet thread (only it: not the daemon, not the worker's
control thread) runs at ordinary priority while the CPU is free, and goes to ``SCHED_RR``
priority 1, the lowest real-time priority, when neighbours make it wait: when, over a
WINDOW, its wake-ups waited on a run queue CONTENDED_WAIT on average (the kernel's schedstat
for the thread). Real time then preempts the neighbours the moment a packet wakes the thread
(measured: p99 0.7 ms beside a busy loop per core, against 4.5 ms), but on a free CPU it costs
~0.1 ms a round trip (the kernel places a waking real-time thread on another core), so it is
held only HOLD seconds at a time, then ordinary priority is tried again. ``realtime``: real
time whenever within the budget, contended or not. ``normal``: ordinary, as upstream.

Bounded as the kernel bounds its own packet work (softirqs run at once until they take too
long, then ``ksoftirqd`` carries on at ordinary priority): a thread that used more than
BUDGET of a core (a fifth) in a window goes back to ordinary scheduling, so bulk traffic
competes like any process and only light traffic (RPCs, DNS, pings) goes ahead of the
neighbours. The kernel's real-time throttle (``kernel.sched_rt_runtime_us``, 95 % of each
second) stays below that as a last bound. Needs ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at
least 1 (the unit's ``LimitRTPRIO=1``); refused (a container, no limit): said once, and the
path runs at ordinary priority.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

AUTO, REALTIME, NORMAL = "auto", "realtime", "normal"
CHOICES = (AUTO, REALTIME, NORMAL)
RT_PRIORITY = 1
WINDOW = 0.25  # seconds between looks at the packet thread
BUDGET = 0.2  # share of one core the packet thread may use at real-time priority
CONTENDED_WAIT = 10e-6  # mean run-queue wait per wake-up (s) that says the CPU is contended
MIN_WAKEUPS = 5  # wake-ups in a window to judge it by
HOLD = 30.0  # seconds real time is kept in auto mode before ordinary is tried again


def next_realtime(mode: str, realtime: bool, share: float, wait: float | None, held: float) -> bool:
    """Whether the packet thread should be real time for the next window: ``share`` of a core
    it used in the last one, ``wait`` its mean run-queue wait per wake-up then (None: too few
    wake-ups, or real time, to tell), ``held`` seconds it has been real time."""
    if mode == NORMAL:
        return False
    if realtime:
        return share <= BUDGET and (mode == REALTIME or held < HOLD)
    if share >= BUDGET / 2:  # back only well under the budget: no flapping at its edge
        return False
    return mode == REALTIME or (wait is not None and wait > CONTENDED_WAIT)


@dataclasses.dataclass
class PriorityState:
    """What the packet thread runs at, for the status document."""

    mode: str = NORMAL
    realtime: bool = False
    raised: int = 0  # times it went real time
    demotions: int = 0  # windows that ended real time for using too much CPU
    refused: str = ""  # why the kernel would not make it real time

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)


class PacketThreadPriority:
    """Sets the packet thread's priority (``enter`` runs in it) and follows it (``watch``
    runs in another thread of the worker, every WINDOW seconds)."""

    def __init__(self, mode: str):
        self.state = PriorityState(mode=mode)
        self._thread: threading.Thread | None = None
        self._tid = 0
        self._cpu = self._at = self._since = 0.0
        self._delay = self._wakeups = 0
        self.last_wait: float | None = None  # the last window's mean run-queue wait (s)

    def enter(self) -> None:
        """Called by the packet thread as it starts."""
        self._thread = threading.current_thread()
        self._tid = threading.get_native_id()
        self._cpu, self._at = time.thread_time(), time.monotonic()
        self._delay, self._wakeups = self._schedstat()
        if self.state.mode == REALTIME:
            self._set(True)

    def watch(self) -> None:
        """One look at the packet thread since the last: its CPU time and its waits."""
        if self.state.mode == NORMAL or self.state.refused or self._thread is None:
            return
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:
            return
        now = time.monotonic()
        delay, wakeups = self._schedstat()
        share = (cpu - self._cpu) / max(now - self._at, 1e-3)
        woke = wakeups - self._wakeups
        wait = (delay - self._delay) / woke / 1e9 if woke >= MIN_WAKEUPS else None
        self.last_wait = wait
        self._cpu, self._at, self._delay, self._wakeups = cpu, now, delay, wakeups
        realtime = self.state.realtime
        wanted = next_realtime(self.state.mode, realtime, share, wait, now - self._since)
        if wanted == realtime:
            return
        if realtime and share > BUDGET:
            self.state.demotions += 1
            log.debug("udp data path: %.0f %% of a core: ordinary priority", share * 100)
        self._set(wanted)
        if wanted:
            self.state.raised += 1
            self._since = now

    def _schedstat(self) -> tuple[int, int]:
        """The packet thread's nanoseconds waited on a run queue, and its time slices."""
        try:
            fields = Path(f"/proc/self/task/{self._tid}/schedstat").read_text().split()
            return int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            return 0, 0

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
