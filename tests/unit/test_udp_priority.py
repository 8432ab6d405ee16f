"""The UDP packet thread's priority (backend/udp/priority.py): real time while it uses under
a fifth of a core, ordinary beyond; refused cleanly where the kernel says no. The threads here are
real and the kernel's scheduler answers (root, as the suite runs)."""

import os
import subprocess
import sys
import threading
import time

import pytest

from pyflannel.backend.udp import priority
from pyflannel.backend.udp.priority import BUDGET, PacketThreadPriority, next_realtime


def test_over_budget_goes_ordinary_and_back_only_well_under_it():
    assert next_realtime(True, 0.1) and next_realtime(True, BUDGET)
    assert not next_realtime(True, BUDGET + 0.01)
    assert not next_realtime(False, BUDGET * 0.6)  # hysteresis: not back at once
    assert next_realtime(False, BUDGET * 0.4)


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
    time.sleep(0.3)
    keeper.watch()  # idle: stays real time
    assert keeper.state.realtime and _policy(tid) == os.SCHED_RR
    spin.set()
    time.sleep(0.5)
    keeper.watch()  # a window of spinning
    assert not keeper.state.realtime and keeper.state.demotions == 1
    assert _policy(tid) == os.SCHED_OTHER
    time.sleep(SPIN)
    keeper.watch()  # the rest of the spin: ordinary still (not under half the budget)
    time.sleep(0.5)
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
