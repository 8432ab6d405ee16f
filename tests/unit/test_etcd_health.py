"""What etcd's own /metrics and status answers say, and the advice status and doctor give."""

import pytest

from pyflannel.etcd.leadership import LeaderLog
from pyflannel.etcd.metrics import parse_member_health
from pyflannel.ops.etcd_advice import etcd_advice, member_line

# As etcd 3.4 writes it (trimmed): 200 WAL fsyncs, 3 of them over 1 s; two peers.
METRICS = """# HELP etcd_server_has_leader Whether or not a leader exists. 1 is existence, 0 is not.
# TYPE etcd_server_has_leader gauge
etcd_server_has_leader 1
etcd_server_leader_changes_seen_total 4
etcd_server_slow_apply_total 7
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 100
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.002"} 150
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.004"} 190
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.512"} 196
etcd_disk_wal_fsync_duration_seconds_bucket{le="1.024"} 197
etcd_disk_wal_fsync_duration_seconds_bucket{le="2.048"} 200
etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} 200
etcd_disk_wal_fsync_duration_seconds_sum 4.1
etcd_disk_wal_fsync_duration_seconds_count 200
etcd_disk_backend_commit_duration_seconds_bucket{le="0.002"} 50
etcd_disk_backend_commit_duration_seconds_bucket{le="+Inf"} 50
etcd_network_peer_round_trip_time_seconds_bucket{To="8e9e05c52164694d",le="0.0001"} 0
etcd_network_peer_round_trip_time_seconds_bucket{To="8e9e05c52164694d",le="0.0002"} 10
etcd_network_peer_round_trip_time_seconds_bucket{To="8e9e05c52164694d",le="+Inf"} 10
etcd_network_peer_round_trip_time_seconds_bucket{To="91bc3c398fb3c146",le="0.0512"} 5
etcd_network_peer_round_trip_time_seconds_bucket{To="91bc3c398fb3c146",le="0.1024"} 10
etcd_network_peer_round_trip_time_seconds_bucket{To="91bc3c398fb3c146",le="+Inf"} 10
"""


def test_member_health_from_its_metrics():
    h = parse_member_health(METRICS)
    assert (h.leader_changes, h.slow_applies, h.slow_fsyncs) == (4, 7, 3)
    # a p99 is what is certain: the lower bound of the bucket that holds it
    assert h.fsync_p99_ms == pytest.approx(1024.0)
    assert h.commit_p99_ms == pytest.approx(0.0)
    assert h.peer_rtt_p99_ms == pytest.approx({"8e9e05c52164694d": 0.1, "91bc3c398fb3c146": 51.2})


def test_a_round_trip_in_the_51_to_102_ms_bucket_is_near_the_heartbeat_not_past_the_election():
    """etcd's buckets double: a 53 ms round trip lands in (51.2, 102.4]. Read as 102 ms it
    would claim more than a tenth of the default election timeout; what is certain is 51 ms,
    near the default heartbeat interval."""
    h = parse_member_health(METRICS)
    member = {"id": "1", "name": "e1", "reachable": True, "leader": True, "rtt_ms": 1.0}
    (advice,) = etcd_advice([{**member, "peer_rtt_p99_ms": h.peer_rtt_p99_ms}], 0)
    assert "reaches at least 51 ms (p99), near the heartbeat interval (100 ms)" in advice.what


def test_metrics_without_the_figures_give_none_not_zero():
    h = parse_member_health("# nothing here\ngo_goroutines 12\n")
    assert (h.leader_changes, h.slow_fsyncs, h.fsync_p99_ms) == (None, None, None)
    assert h.peer_rtt_p99_ms == {}


def test_a_change_is_a_new_leader_named_after_another():
    log = LeaderLog()
    assert not log.observe(0xA, now=100)  # the first leader seen is no change
    assert not log.observe(0xA, now=101)
    assert not log.observe(0, now=102)  # an election under way
    assert log.observe(0xB, now=103)
    assert log.observe(0xA, now=200)
    assert log.changes_within(now=250) == 2
    assert log.changes_within(now=103 + 3600.5) == 1  # an hour later the first one is gone
    assert log.leader == 0xA


def member(**kw) -> dict:
    base = {
        "name": "e1",
        "id": "8e9e05c52164694d",
        "leader": False,
        "reachable": True,
        "rtt_ms": 0.8,
        "knows_leader": "91bc3c398fb3c146",
        "leader_changes": 1,
        "slow_applies": 0,
        "slow_fsyncs": 0,
        "fsync_p99_ms": 2.0,
        "commit_p99_ms": 4.0,
        "peer_rtt_p99_ms": {"91bc3c398fb3c146": 0.4},
    }
    return {**base, **kw}


def test_a_healthy_cluster_gets_no_advice():
    assert etcd_advice([member(), member(name="e2", id="91bc3c398fb3c146", leader=True)], 0) == []


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"reachable": False, "error": "connection refused"}, "unreachable from this node"),
        ({"knows_leader": ""}, "knows no leader"),
        ({"rtt_ms": 80.0}, "round trip to etcd member e1 is 80 ms"),
        ({"peer_rtt_p99_ms": {"91bc3c398fb3c146": 51.2}}, "near the heartbeat interval (100 ms)"),
        ({"peer_rtt_p99_ms": {"91bc3c398fb3c146": 204.8}}, "more than a tenth of the election"),
        ({"slow_applies": 7}, "took too long to apply 7 entries"),
        ({"fsync_p99_ms": 32.0}, "WAL fsync p99 is at least 32 ms"),
        ({"slow_fsyncs": 3}, "3 over 1 s"),
        ({"commit_p99_ms": 64.0}, "backend commit p99 is at least 64 ms"),
    ],
)
def test_each_sign_of_trouble_is_named_with_its_fix(changes, fragment):
    advice = etcd_advice([member(**changes)], 0)
    assert len(advice) == 1 and fragment in advice[0].what and advice[0].fix


def test_peer_round_trips_name_both_members_and_the_settings_to_use():
    e2 = member(name="e2", id="91bc3c398fb3c146")
    (advice,) = etcd_advice([member(peer_rtt_p99_ms={"91bc3c398fb3c146": 204.8}), e2], 0)
    assert "between etcd members e1 and e2" in advice.what
    assert "--heartbeat-interval to about 205 ms" in advice.fix
    assert "--election-timeout to at least 2048 ms" in advice.fix
    assert "(now 100 and 1000 ms)" in advice.fix
    # near the heartbeat interval: never advised to lower it below what it is
    (near,) = etcd_advice([member(peer_rtt_p99_ms={"91bc3c398fb3c146": 51.2}), e2], 0)
    assert "if it grows, set etcd's --heartbeat-interval to about the round trip" in near.fix


def test_the_tuning_given_is_what_round_trips_are_judged_against():
    slow = member(peer_rtt_p99_ms={"91bc3c398fb3c146": 51.2})
    assert etcd_advice([slow], 0, heartbeat_ms=500, election_ms=5000) == []
    (advice,) = etcd_advice([member()], 0, heartbeat_ms=0.6, election_ms=1000)
    assert "near the heartbeat interval (1 ms)" in advice.what


def test_frequent_leader_changes_are_named():
    assert etcd_advice([member()], 2) == []
    (advice,) = etcd_advice([member()], 3)
    assert "changed its leader 3 times in the last hour" in advice.what


def test_member_lines():
    assert member_line(member()) == (
        "e1: rtt 0.8 ms, follower of 91bc3c398fb3c146, leader changes 1, slow applies 0, "
        "WAL fsync p99 >= 2 ms (0 over 1 s), to peers p99 >= 0.4 ms"
    )
    assert member_line(member(leader=True)).startswith("e1: rtt 0.8 ms, leader,")
    assert member_line(member(reachable=False, error="refused")) == (
        "e1: UNREACHABLE from this node (refused)"
    )
