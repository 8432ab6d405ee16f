"""Churn under faults stays exact: 3 VXLAN nodes while leases are added and removed every
second, etcd killed (kill -9) and its history compacted; when the churn stops every node's
kernel holds exactly the leases etcd holds (the soak, longer: bench/churn.py)."""

import math
import time

import pytest

from testbed.churn import CONFIG, Churn, kernel_against_etcd, run_churn

from .conftest import eventually, started_bed


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=3, config=CONFIG, daemon_args=("--reconcile-interval=30",), pods=False)
    yield bed
    bed.close()


def exact(bed, node) -> None:
    missing, extra = kernel_against_etcd(bed, node)
    assert not missing and not extra, (
        f"node {node.index}: {len(missing)} leases not routed, {len(extra)} routes of no lease"
        f" (e.g. {sorted(missing)[:3]} / {sorted(extra)[:3]})"
    )


def test_churn_through_etcd_kills_and_a_compaction_ends_exact(bed):
    churn = run_churn(bed, Churn(seconds=30, kills_at=(9.0, 20.0), rate=20, live=150))
    assert churn.writer["written"] > 300 and churn.writer["deleted"] > 150, churn.writer
    for node in bed.nodes:
        # within the watch's recovery, well before the 30 s reconcile could repair anything
        eventually(lambda node=node: exact(bed, node), timeout=8, interval=0.5)


def test_probe_sockets_to_peers_that_do_not_exist_stay_bounded(bed):
    """The churned leases' peers do not exist: their TCP probes hang in SYN-SENT until the
    probe's 1 s timeout. At most --probe-rate / 3 of them are open at once (README)."""
    node = bed.nodes[0]
    assert len(node.routes()) >= 100  # the churn left its live leases: peers nobody answers for
    bound = math.ceil(50 / 3)  # the default --probe-rate
    counts = []
    for _ in range(20):
        out = node.run("ss", "-Htn", "state", "syn-sent").stdout
        counts.append(len(out.splitlines()))
        time.sleep(0.25)
    assert 0 < max(counts) <= bound, counts  # probing them, and never more than the bound
