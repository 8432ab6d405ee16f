"""Where a lone packet's time goes through the UDP path: one ping's round trip cut into
stages from the system calls of ping and of both nodes' packet threads, for pyflannel and
upstream flanneld v0.20.2 side by side in one run.

    sudo python3 bench/udp_stages.py [--pings 150]

Each node runs one data-path worker (pyflannel ``--udp-workers=1``; upstream has one loop), a
pod on node a pings a pod on node b every 10 ms, and ``perf trace`` records every node's
reads, writes, sends, receives and polls for 0.5 s. Per ping, from the timestamps:

    a: pod -> TUN -> awake   ping's send until a's packet thread reads the TUN (the kernel's
                              path from the pod, the wake-up, the loop's dispatch)
    a: TUN -> UDP            that read until a's send returns (the packet code)
    underlay + b awake       until b's packet thread receives the datagram
    b: UDP -> TUN            that receive until b's TUN write returns (the packet code; the
                              pod's echo reply is made inside that write)
    b: TUN -> UDP            b's read of the reply until its send returns
    underlay + a awake       until a's packet thread receives the reply
    a: UDP -> TUN            until a's TUN write returns
    a: TUN -> pod            until ping's receive returns

``perf trace`` itself adds to every system call (~10-20 us here), so the stages are longer
than untraced and the sum exceeds the untraced round trip; compare stages between the two
implementations, not with other figures. Medians over the traced pings. Writes
bench/results/udp-stages.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, write_results
from bench.upstream import cluster
from testbed.bed import TestBed

SYSCALLS = "read,readv,write,writev,sendto,sendmsg,recvmsg,recvfrom,epoll_wait,epoll_pwait"
STAGES = (
    "a: pod -> TUN -> awake",
    "a: TUN -> UDP",
    "underlay + b awake",
    "b: UDP -> TUN",
    "b: TUN -> UDP",
    "underlay + a awake",
    "a: UDP -> TUN",
    "a: TUN -> pod",
)
LINE = re.compile(
    r"^\s*(?P<t>[\d.]+) \(\s*(?P<dur>[\d.]*) ms\): (?P<comm>\S+?)/(?P<tid>\d+)\s+"
    r"(?:\.\.\. \[continued\]: )?(?P<call>\w+)\(.*\)\s+= (?P<ret>-?\d+)"
)
TUN_READ, TUN_WRITE = ("read", "readv"), ("write", "writev")
UDP_SEND, UDP_RECEIVE = ("sendto", "sendmsg"), ("recvmsg", "recvfrom")


def calls(path: Path) -> list[tuple[float, float, str, int, str, int]]:
    """(start ms, end ms, command, thread, call, result) of every completed call, by start."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m is None or not m["dur"]:
            continue
        t, dur = float(m["t"]), float(m["dur"])
        out.append((t, t + dur, m["comm"], int(m["tid"]), m["call"], int(m["ret"])))
    return sorted(out)


def rounds(events, size: int) -> list[list[float]]:
    """Per ping whose every step was seen: the stages' milliseconds."""
    found = []
    sends = [e for e in events if e[2] == "ping" and e[4] == "sendto"]
    for send, following in zip(sends, [*sends[1:], None], strict=True):
        end = following[0] if following else float("inf")
        window = [e for e in events if send[0] <= e[0] < end and e[2] != "ping"]
        try:
            steps = _steps(window, size)
            back = next(
                e
                for e in events
                if e[2] == "ping" and e[4] == "recvmsg" and e[5] > 0 and e[1] > steps[-1]
            )
        except StopIteration:
            continue
        points = [send[0], *steps, back[1]]
        found.append([b - a for a, b in itertools.pairwise(points)])
    return found


def _steps(window, size: int) -> list[float]:
    """The 7 time points after ping's send: a reads the TUN, a's send returns, b receives,
    b's TUN write returns, b reads the TUN, b's send returns, a receives, a's write returns."""

    def first(calls_, after, tid=None, not_tid=None, result=None):
        return next(
            e
            for e in window
            if e[4] in calls_
            and e[0] >= after
            and (tid is None or e[3] == tid)
            and (not_tid is None or e[3] != not_tid)
            and (result is None or e[5] >= result)
        )

    a_read = first(TUN_READ, 0, result=size)
    a_send = first(UDP_SEND, a_read[0], tid=a_read[3])
    b_recv = first(UDP_RECEIVE, a_send[0], not_tid=a_read[3], result=size)
    b_write = first(TUN_WRITE, b_recv[0], tid=b_recv[3])
    b_read = first(TUN_READ, b_write[0], tid=b_recv[3], result=size)
    b_send = first(UDP_SEND, b_read[0], tid=b_recv[3])
    a_recv = first(UDP_RECEIVE, b_send[0], not_tid=b_recv[3], result=size)
    a_write = first(TUN_WRITE, a_recv[0], tid=a_recv[3])
    return [
        a_read[0],
        a_send[1],
        b_recv[0],
        b_write[1],
        b_read[0],
        b_send[1],
        a_recv[0],
        a_write[1],
    ]


def traced(bed: TestBed, impl: str, pings: int, out: Path) -> list[list[float]]:
    flags = ("--udp-workers=1",) if impl == "pyflannel" else ()
    cluster(bed, impl, "udp", flags=flags)
    a, b = bed.nodes
    for node in (a, b):
        node.add_pod()
    time.sleep(1)
    ping = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            a.pod_ns,
            "ping",
            "-n",
            "-c",
            str(pings),
            "-i",
            "0.01",
            str(b.pod_ip),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    subprocess.run(
        ["perf", "trace", "-a", "-e", SYSCALLS, "-o", str(out), "--", "sleep", "0.5"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    ping.wait(timeout=60)
    return rounds(calls(out), 84)  # a 64-byte ping: 84 bytes of IPv4 (one more with a header)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=150)
    args = parser.parse_args()
    results = {}
    with TestBed(hosts=2) as bed, tempfile.TemporaryDirectory() as scratch:
        for impl in ("pyflannel", "upstream"):
            found = traced(bed, impl, args.pings, Path(scratch) / f"{impl}.trace")
            results[impl] = {
                "pings": len(found),
                "stages_ms": {s: summary([r[i] for r in found]) for i, s in enumerate(STAGES)},
                "total_ms": summary([sum(r) for r in found]),
            }
            print(f"{impl}: {len(found)} pings traced end to end", flush=True)
    rows = [
        [stage, *(results[i]["stages_ms"][stage]["median"] for i in results)] for stage in STAGES
    ]
    rows.append(["round trip (traced)", *(results[i]["total_ms"]["median"] for i in results)])
    text = table(["stage", "pyflannel ms", "upstream ms"], rows)
    text += "\n\nmedians over the traced pings; perf trace adds ~10-20 us to every system call"
    print(text)
    write_results("udp-stages", {"args": vars(args), "results": results}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
