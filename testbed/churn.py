"""A churn soak on a bed: synthetic peer leases added and removed at a steady rate while etcd
is killed (kill -9, restarted on its data) and its history compacted, then a check that every
node's kernel holds exactly the leases etcd holds. Used by bench/churn.py and, shorter, by
tests/e2e/test_churn.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.bed import Node, TestBed

CONFIG = {"Network": "10.0.0.0/12", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
WRITER = Path(__file__).resolve().parent.parent / "bench" / "churn_writer.py"


@dataclass
class Churn:
    seconds: float
    kills_at: tuple[float, ...]  # seconds into the churn
    compact_after_last_kill: bool = True
    rate: int = 20  # leases added and removed per second
    live: int = 300
    writer: dict = field(default_factory=dict)


def run_churn(bed: TestBed, churn: Churn) -> Churn:
    network = CONFIG["Network"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", bed.lan, sys.executable, str(WRITER), bed.etcd.url, network,
         str(churn.rate), str(churn.live), str(churn.seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    t0 = time.monotonic()
    try:
        for i, at in enumerate(churn.kills_at):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            bed.etcd.restart()  # kill -9, start on the same data
            if churn.compact_after_last_kill and i == len(churn.kills_at) - 1:
                revision = json.loads(bed.etcd.ctl("endpoint", "status", "-w", "json").stdout)
                bed.etcd.ctl("compact", str(revision[0]["Status"]["header"]["revision"]))
        out, err = proc.communicate(timeout=churn.seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"churn writer failed: {err[-2000:]}")
    churn.writer = json.loads(out.splitlines()[-1])
    return churn


def kernel_against_etcd(bed: TestBed, node: Node) -> tuple[set[str], set[str]]:
    """(leased in etcd but not routed on ``node``, routed on ``node`` but not leased)."""
    leased = {key.rsplit("/", 1)[1].replace("-", "/") for key in bed.leases()} - {str(node.subnet)}
    routed = {r["dst"] for r in node.routes()} - {str(node.subnet)}
    return leased - routed, routed - leased
