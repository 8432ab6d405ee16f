"""What an etcd member's own ``/metrics`` says about its health (pure: text in, figures out).

The figures operators need when etcd is slow or far away: leader changes, applies that took
too long ("apply entries took too long" in etcd's log), WAL fsyncs slower than etcd's own
warning threshold (1 s), the p99 of WAL fsync and backend commit, and the round trip to each
peer member as Raft measures it. A p99 is what the 99th percentile is known to reach (at
least; etcd's histogram buckets double).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SLOW_FSYNC_S = 1.0  # etcd logs "slow fdatasync" above 1 s


@dataclass(frozen=True)
class MemberHealth:
    leader_changes: int | None = None  # seen by the member since it started
    slow_applies: int | None = None
    slow_fsyncs: int | None = None  # WAL fsyncs over SLOW_FSYNC_S
    fsync_p99_ms: float | None = None
    commit_p99_ms: float | None = None
    peer_rtt_p99_ms: dict[str, float] = field(default_factory=dict)  # peer member id (hex)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|\+Inf|NaN)$", re.M)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    return [
        (m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3)))
        for m in _SAMPLE.finditer(text)
    ]


def parse_member_health(text: str) -> MemberHealth:
    values: dict[str, float] = {}
    buckets: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, labels, value in samples(text):
        if name.endswith("_bucket") and "le" in labels:
            le = labels.pop("le")
            series = buckets.setdefault(name[: -len("_bucket")], {})
            key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            series.setdefault(key, []).append((float(le), value))
        elif not labels:
            values[name] = values.get(name, 0.0) + value

    def counter(name: str) -> int | None:
        return int(values[name]) if name in values else None

    fsync = _one(buckets.get("etcd_disk_wal_fsync_duration_seconds"))
    peers = buckets.get("etcd_network_peer_round_trip_time_seconds", {})
    return MemberHealth(
        leader_changes=counter("etcd_server_leader_changes_seen_total"),
        slow_applies=counter("etcd_server_slow_apply_total"),
        slow_fsyncs=None if fsync is None else above(fsync, SLOW_FSYNC_S),
        fsync_p99_ms=_p99_ms(fsync),
        commit_p99_ms=_p99_ms(_one(buckets.get("etcd_disk_backend_commit_duration_seconds"))),
        peer_rtt_p99_ms={
            key.removeprefix("To="): p99
            for key, series in peers.items()
            if (p99 := _p99_ms(series)) is not None
        },
    )


def _one(series: dict[str, list[tuple[float, float]]] | None) -> list[tuple[float, float]] | None:
    return None if not series else next(iter(series.values()))


def above(buckets: list[tuple[float, float]], seconds: float) -> int:
    """How many observations of a cumulative histogram exceeded ``seconds`` (by the first
    bucket bound at or above it)."""
    ordered = sorted(buckets)
    total = ordered[-1][1]
    within = next((count for bound, count in ordered if bound >= seconds), total)
    return int(total - within)


def _p99_ms(buckets: list[tuple[float, float]] | None) -> float | None:
    """What the 99th percentile is known to reach, in ms: the lower bound of the bucket that
    holds it. etcd's buckets double, so the upper bound would overstate by up to 2 x (a 53 ms
    round trip read as 102 ms, "more than a tenth of the election timeout"); advice on what
    is certain does not cry wolf."""
    if not buckets:
        return None
    ordered = sorted(buckets)
    total = ordered[-1][1]
    if total == 0:
        return None
    lower = 0.0
    for bound, count in ordered:
        if count >= 0.99 * total:
            return lower * 1000
        lower = bound
    return None
