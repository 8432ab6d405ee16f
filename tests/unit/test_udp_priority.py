"""The UDP packet thread's priority (backend/udp/priority.py): real time (always, or in auto
mode while neighbours make it wait) while it uses under a fifth of a core, ordinary beyond;
refused cleanly where the kernel says no. The threads here are real and the kernel's scheduler
answers (root, as the suite runs)."""

import os
import subprocess
import sys
import threading
import time

import pytest

from pyflannel.backend.udp import priority
from pyflannel.backend.udp.priority import (
    AUTO,
    BUDGET,
    CONTENDED_IDLE,
    CONTENDED_WAIT,
    HOLD,
    NORMAL,
    REALTIME,
    PacketThreadPriority,
    neighbours_contend,
    next_realtime,
)


def test_neighbours_contend_when_the_thread_waits_and_its_cpus_are_not_idle():
    waited, busy = CONTENDED_WAIT * 10, CONTENDED_IDLE / 4
    assert neighbours_contend(waited, busy)
    # a lone flow's wake-ups wait for whoever woke them, on CPUs that are otherwise idle
    assert not neighbours_contend(waited, 0.99)
    assert not neighbours_contend(CONTENDED_WAIT / 10, busy)  # busy CPUs, but the thread is let in
    assert not neighbours_contend(None, busy) and not neighbours_contend(
        waited, None
    )  # too little to tell


def test_auto_is_real_time_only_while_neighbours_contend():
    assert not next_realtime(AUTO, False, 0.01, False, 0)
    assert next_realtime(AUTO, False, 0.01, True, 0)
    assert next_realtime(AUTO, True, 0.01, False, HOLD / 2)  # held...
    assert not next_realtime(AUTO, True, 0.01, False, HOLD)  # ... then ordinary, to look again
    assert next_realtime(REALTIME, False, 0.01, False, 0)
    assert next_realtime(REALTIME, True, 0, False, 1e6)
    assert not next_realtime(NORMAL, False, 0.01, True, 0)


def test_over_budget_goes_ordinary_and_back_only_well_under_it():
    for mode in (AUTO, REALTIME):
        assert next_realtime(mode, True, BUDGET, False, 0)
        assert not next_realtime(mode, True, BUDGET + 0.01, False, 0)
        assert not next_realtime(mode, False, BUDGET * 0.6, True, 0)  # not back at once
        assert next_realtime(mode, False, BUDGET * 0.4, True, 0)


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid)


SPIN = 0.6  # seconds of CPU the packet thread burns when told to


@pytest.fixture
def packet_thread():
    """A thread that enters real time, then idles; told to (``spin`` set), it burns CPU for
    SPIN seconds by its own clock and idles again (not waiting for the test to stop it: the
    test's thread would first have to win the GIL from it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_NICE) to make a thread real time")
    keeper = PacketThreadPriority(priority.REALTIME)
    spin, stop, entered = threading.Event(), threading.Event(), threading.Event()
    tids: list[int] = []

    def run():
        keeper.enter()
        tids.append(threading.get_native_id())
        entered.set()
        while not stop.is_set():
            if spin.is_set():
                spin.clear()
                until = time.monotonic() + SPIN
                while time.monotonic() < until:
                    sum(range(10_000))
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(5)
    yield keeper, tids[0], spin
    stop.set()
    thread.join(5)


def test_the_packet_thread_is_real_time_until_it_takes_more_than_its_budget(packet_thread):
    keeper, tid, spin = packet_thread
    assert _policy(tid) == os.SCHED_RR and os.sched_getparam(tid).sched_priority == 1
    assert _policy(threading.get_native_id()) == os.SCHED_OTHER  # only that thread
    time.sleep(0.25)
    keeper.watch()  # idle: stays real time
    assert keeper.state.realtime and _policy(tid) == os.SCHED_RR
    spin.set()
    time.sleep(0.3)
    keeper.watch()  # a window of spinning
    assert not keeper.state.realtime and keeper.state.demotions == 1
    assert _policy(tid) == os.SCHED_OTHER
    time.sleep(SPIN)
    keeper.watch()  # the rest of the spin: ordinary still (not under half the budget)
    time.sleep(0.3)
    keeper.watch()  # a whole window idle
    assert keeper.state.realtime and _policy(tid) == os.SCHED_RR


REFUSED = """
import threading
from pyflannel.backend.udp.priority import PacketThreadPriority
keeper = PacketThreadPriority("realtime")
t = threading.Thread(target=keeper.enter); t.start(); t.join()
print(keeper.state.realtime, keeper.state.refused)
"""


def test_without_the_right_to_real_time_it_says_so_and_stays_ordinary():
    """As under a unit without LimitRTPRIO=1 and without CAP_SYS_NICE (a container)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_SYS_NICE for the child")
    ran = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-sys_nice",
            "--bounding-set=-sys_nice",
            "prlimit",
            "--rtprio=0",
            sys.executable,
            "-c",
            REFUSED,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "False SCHED_RR refused: Operation not permitted", ran.stdout
    assert "real-time priority refused" in ran.stderr


def test_auto_goes_real_time_when_busy_neighbours_share_its_core_and_not_before():
    """A thread waking every millisecond (a light packet flow) pinned to one core: ordinary
    while the core is free; two busy loops put on that core take its idle time and make the
    thread's wake-ups wait, and the next look makes it real time. (Whether the core is free
    before the hogs is not this test's to choose, another process of the machine may be on
    it: the first look is judged by what it measured.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_NICE) to make a thread real time")
    core = sorted(os.sched_getaffinity(0))[-1]
    keeper = PacketThreadPriority(AUTO)
    stop, entered = threading.Event(), threading.Event()
    tids: list[int] = []

    def run():
        os.sched_setaffinity(0, {core})
        keeper.enter()
        tids.append(threading.get_native_id())
        entered.set()
        while not stop.is_set():
            time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(5)
    hogs: list[subprocess.Popen] = []
    try:
        time.sleep(0.3)
        keeper.watch()
        assert keeper.last_idle is not None  # the core's ticks were read
        waited = neighbours_contend(keeper.last_wait, keeper.last_idle)
        assert keeper.state.realtime == waited, (keeper.last_wait, keeper.last_idle, keeper.state)
        assert _policy(tids[0]) == (os.SCHED_RR if waited else os.SCHED_OTHER)
        hogs = [
            subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])
            for _ in range(2)
        ]
        time.sleep(0.5)
        keeper.watch()  # the baseline: the windows before held the hogs' start
        time.sleep(0.3)
        keeper.watch()
        assert keeper.state.realtime and keeper.state.raised == 1, keeper.state
        assert keeper.last_idle < CONTENDED_IDLE, keeper.last_idle
        assert _policy(tids[0]) == os.SCHED_RR
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        stop.set()
        thread.join(5)
