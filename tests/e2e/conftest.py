"""End-to-end fixtures: a namespace test bed with real etcd and real daemons, one per module."""

import shutil

from testbed.bed import TestBed
from tests.conftest import require, require_etcd, require_root

FAST_RECONCILE = ("--reconcile-interval=2",)


def require_testbed() -> None:
    require_root()
    require_etcd()
    for tool in ("ip", "bridge", "ping"):
        require(
            shutil.which(tool) is not None,
            f"the {tool} command (apt install iproute2 iputils-ping)",
        )


def started_bed(
    hosts: int = 3, mtu: int = 1500, config=None, daemon_args=FAST_RECONCILE
) -> TestBed:
    """A bed with daemons running on every node and a pod behind each."""
    require_testbed()
    bed = TestBed(hosts=hosts, mtu=mtu)
    bed.__enter__()
    try:
        bed.put_config(config)
        for node in bed.nodes:
            node.start(*daemon_args)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
    except BaseException:
        bed.close()
        raise
    return bed


def eventually(check, timeout: float = 10.0, interval: float = 0.1):
    """Call ``check`` until it stops raising AssertionError (or time runs out); its result."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
