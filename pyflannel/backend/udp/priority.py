"""The UDP data path's CPU priority (``--udp-priority``): a packet thread that wakes when a
packet arrives should run at once, not after a busy neighbour's time slice.

``auto`` (the default): each worker's packet thread (only it: not the daemon, not the worker's
control thread) runs at ordinary priority while the CPU is free, and goes to ``SCHED_RR``
priority 1, the lowest real-time priority, when neighbours make it wait: when, over a
WINDOW, its wake-ups waited on a run queue CONTENDED_WAIT on average (the kernel's schedstat
for the thread) *and* its CPUs were idle less than CONTENDED_IDLE of the time (/proc/stat).
Both: a lone flow's wake-ups wait too, for whoever woke them (the pod that sent, the softirq
that received) to leave the CPU: 3-70 us on average, measured, on CPUs 99 % idle; a busy loop
per core makes that 110-215 us, with no idle time. Real time then preempts the neighbours the
moment a packet wakes the thread (measured: p99 0.7 ms beside a busy loop per core, against
4.5 ms), but on a free CPU it costs ~0.05-0.1 ms a round trip (the kernel places a waking
real-time thread on another core, away from the warm cache), so it is held only HOLD seconds
at a time, then ordinary priority is tried again. ``realtime``: real time whenever within the
budget, contended or not. ``normal``: ordinary, as upstream.

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
CONTENDED_IDLE = 0.2  # ... if the thread's CPUs were idle less than this share of the window
MIN_WAKEUPS = 5  # wake-ups in a window to judge it by
HOLD = 30.0  # seconds real time is kept in auto mode before ordinary is tried again


def neighbours_contend(wait: float | None, idle: float | None) -> bool:
    """Whether neighbours made the packet thread wait in a window: ``wait`` its mean run-queue
    wait per wake-up (None: too few wake-ups to tell), ``idle`` the share of the time its
    CPUs were idle (None: unknown)."""
    return wait is not None and wait > CONTENDED_WAIT and idle is not None and idle < CONTENDED_IDLE


def next_realtime(mode: str, realtime: bool, share: float, contended: bool, held: float) -> bool:
    """Whether the packet thread should be real time for the next window: ``share`` of a core
    it used in the last one, whether neighbours ``contended`` for its CPUs then
    (neighbours_contend()), ``held`` seconds it has been real time."""
    if mode == NORMAL:
        return False
    if realtime:
        return share <= BUDGET and (mode == REALTIME or held < HOLD)
    if share >= BUDGET / 2:  # back only well under the budget: no flapping at its edge
        return False
    return mode == REALTIME or contended


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
        self._idle: tuple[int, int] = (0, 0)
        self.last_wait: float | None = None  # the last window's mean run-queue wait (s) ...
        self.last_idle: float | None = None  # ... and its CPUs' idle share

    def enter(self) -> None:
        """Called by the packet thread as it starts."""
        self._thread = threading.current_thread()
        self._tid = threading.get_native_id()
        self._cpu, self._at = time.thread_time(), time.monotonic()
        self._delay, self._wakeups = self._schedstat()
        self._idle = self._cpus_idle()
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
        self.last_wait = (delay - self._delay) / woke / 1e9 if woke >= MIN_WAKEUPS else None
        idle = self._cpus_idle()
        ticks = idle[1] - self._idle[1]
        self.last_idle = (idle[0] - self._idle[0]) / ticks if ticks > 0 else None
        self._cpu, self._at, self._delay, self._wakeups, self._idle = cpu, now, delay, wakeups, idle
        realtime = self.state.realtime
        wanted = next_realtime(
            self.state.mode,
            realtime,
            share,
            neighbours_contend(self.last_wait, self.last_idle),
            now - self._since,
        )
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

    def _cpus_idle(self) -> tuple[int, int]:
        """Idle and all clock ticks so far of the CPUs the packet thread may run on."""
        try:
            allowed = {f"cpu{n}" for n in os.sched_getaffinity(self._tid)}
            idle = total = 0
            for line in Path("/proc/stat").read_text().splitlines():
                name, _, rest = line.partition(" ")
                if name in allowed:
                    # user nice system idle iowait irq softirq steal (guest is within user)
                    ticks = [int(t) for t in rest.split()[:8]]
                    idle += ticks[3] + ticks[4]
                    total += sum(ticks)
            return idle, total
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
