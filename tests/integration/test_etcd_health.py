"""Each etcd member's own view, read from a real etcd: its status and its /metrics, a slow
apply provoked for real (etcd's own warning threshold set to a nanosecond), and a slow disk
(etcd's writes throttled by the kernel's blkio controller)."""

import pytest

from pyflannel.etcd.client import EtcdClient
from pyflannel.ops.doctor.checks import Probe, judge_etcd
from pyflannel.ops.etcd_advice import FSYNC_P99_MS, etcd_advice
from pyflannel.ops.status.document import StatusDoc
from pyflannel.ops.status.report import render
from testbed import slowdisk
from testbed.etcd import EtcdServer
from tests.conftest import require

from .conftest import require_etcd


async def test_a_member_reports_its_round_trip_leader_and_disk_figures(client, prefix):
    for i in range(20):  # WAL fsyncs to measure
        await client.put(f"{prefix}/k{i}".encode(), b"v")
    (member,) = await client.members()
    assert member["reachable"] and member["leader"]
    assert 0 < member["rtt_ms"] < 1000
    assert member["knows_leader"] == member["id"]
    assert member["leader_changes"] >= 1  # its own first election
    assert member["slow_applies"] == 0 and member["slow_fsyncs"] == 0
    assert member["fsync_p99_ms"] >= 0 and member["commit_p99_ms"] >= 0  # "at least": may be 0
    assert member["peer_rtt_p99_ms"] == {}  # no peers
    assert client.leaders.leader == int(member["id"], 16)


@pytest.fixture
def slow_applying_etcd():
    require_etcd()
    with EtcdServer(extra_args=("--experimental-warning-apply-duration=1ns",)) as server:
        yield server


async def test_slow_applies_are_counted_and_named_with_the_fix(slow_applying_etcd):
    client = EtcdClient([slow_applying_etcd.url], timeout=3)
    try:
        for i in range(5):
            await client.put(f"/slow/k{i}".encode(), b"v")
        (member,) = await client.members()
    finally:
        await client.close()
    assert member["slow_applies"] >= 5
    (advice,) = etcd_advice([member], 0)
    assert f"took too long to apply {member['slow_applies']} entries" in advice.what
    assert "disk or CPU" in advice.fix


@pytest.fixture
def etcd_on_a_slow_disk():
    require_etcd()
    require(slowdisk.available(), "the cgroup-v1 blkio controller (throttled writes)")
    with EtcdServer() as server, slowdisk.slow_writes(server.proc.pid, server.data_dir, iops=40):
        yield server


async def test_a_slow_disk_is_named_by_status_and_doctor_with_the_fix(etcd_on_a_slow_disk):
    client = EtcdClient([etcd_on_a_slow_disk.url], timeout=10)
    try:
        for i in range(8):  # each put: a WAL fsync and a backend commit, throttled
            await client.put(f"/slowdisk/k{i}".encode(), b"v")
        (member,) = await client.members()
    finally:
        await client.close()
    assert member["fsync_p99_ms"] > FSYNC_P99_MS, member
    whats = [a.what for a in etcd_advice([member], 0)]
    assert any("WAL fsync p99" in w for w in whats), whats
    assert any("backend commit p99" in w for w in whats), whats
    # status's text and doctor's judgement of the same figures: warnings with the fix
    url = etcd_on_a_slow_disk.url
    doc = {"daemon": {"running": False}, "etcd": {"current": url, "reachable": True}}
    text = render(StatusDoc.parse({**doc, "etcd": {**doc["etcd"], "members": [member]}}))
    assert "WAL fsync p99" in text and "advice: etcd member" in text, text
    probe = Probe(True, facts={"endpoint": url, "rtt_ms": 1.0, "members": [member]})
    findings = judge_etcd(probe, 0)
    assert findings[0].status == "warn"
    advice = [f for f in findings if f.check.startswith("etcd-advice")]
    fsync = next(f for f in advice if "WAL fsync p99" in f.detail)
    assert fsync.status == "warn" and "SSD" in fsync.advice


async def test_an_unreachable_member_is_reported_not_raised(client):
    look = await client._look_at(["http://127.0.0.1:9"])  # nothing listens on the discard port
    assert look["reachable"] is False and "refused" in look["error"]
