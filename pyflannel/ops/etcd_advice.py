"""What an operator should know about the etcd cluster a node uses, from the members' own view
(``EtcdClient.members()``: round trip from this node, the leader each knows, their /metrics)
and the leader changes this node saw. Pure: status and doctor both say these.

Thresholds follow etcd's tuning guide: the heartbeat interval should be about the largest
round trip between members, the election timeout at least ten times it; a WAL fsync above
10 ms (p99) or any over 1 s, and applies that took too long, are a slow disk (or CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

HEARTBEAT_MS = 100  # etcd's defaults (--heartbeat-interval, --election-timeout)
ELECTION_MS = 1000
NODE_RTT_MS = 50  # from a node: every lease operation waits this long, at least
FSYNC_P99_MS = 10
COMMIT_P99_MS = 25
LEADER_CHANGES_PER_HOUR = 3


@dataclass(frozen=True)
class Advice:
    what: str  # the fact
    fix: str  # what to do about it


def member_line(m: dict) -> str:
    """One member as status and doctor print it."""
    name = m.get("name") or m.get("id", "?")
    if not m.get("reachable", True):
        return f"{name}: UNREACHABLE from this node ({m.get('error', 'no answer')})"
    parts = [f"rtt {m['rtt_ms']:.1f} ms" if m.get("rtt_ms") is not None else "rtt -"]
    parts.append("leader" if m.get("leader") else f"follower of {m.get('knows_leader') or 'NONE'}")
    for key, label in (("leader_changes", "leader changes"), ("slow_applies", "slow applies")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]}")
    if m.get("fsync_p99_ms") is not None:
        parts.append(
            f"WAL fsync p99 >= {m['fsync_p99_ms']:.0f} ms ({m.get('slow_fsyncs', 0)} over 1 s)"
        )
    peers = m.get("peer_rtt_p99_ms") or {}
    if peers:
        parts.append(f"to peers p99 >= {max(peers.values()):.1f} ms")
    return f"{name}: " + ", ".join(parts)


def etcd_advice(
    members: list[dict],
    leader_changes_last_hour: int | None,
    heartbeat_ms: float = HEARTBEAT_MS,
    election_ms: float = ELECTION_MS,
) -> list[Advice]:
    advice: list[Advice] = []
    names = {m.get("id"): m.get("name") or m.get("id") for m in members}
    for m in members:
        name = m.get("name") or m.get("id", "?")
        if not m.get("reachable", True):
            advice.append(
                Advice(
                    f"etcd member {name} is unreachable from this node: {m.get('error', '')}",
                    "if it is down, the others keep serving while they are a majority; "
                    "check its host, the path to it (TCP 2379) and its TLS files",
                )
            )
            continue
        if m.get("reachable") and not m.get("knows_leader") and not m.get("leader"):
            advice.append(
                Advice(
                    f"etcd member {name} knows no leader",
                    "it is cut off from the other members or an election is under way; "
                    "check the paths between members (TCP 2380)",
                )
            )
        rtt = m.get("rtt_ms")
        if rtt is not None and rtt > NODE_RTT_MS:
            advice.append(
                Advice(
                    f"round trip to etcd member {name} is {rtt:.0f} ms",
                    f"above {NODE_RTT_MS} ms every lease operation is slow; put etcd closer",
                )
            )
        for peer, peer_rtt in sorted((m.get("peer_rtt_p99_ms") or {}).items()):
            between = f"between etcd members {name} and {names.get(peer, peer)}"
            found = raft_round_trip(between, peer_rtt, heartbeat_ms, election_ms)
            if found is not None:
                advice.append(found)
        if m.get("slow_applies"):
            advice.append(
                Advice(
                    f"etcd member {name} took too long to apply {m['slow_applies']} entries "
                    "since it started",
                    "its disk or CPU is overloaded (etcd logs 'apply request took too long'); "
                    "give etcd a fast disk and CPU of its own",
                )
            )
        fsync, slow = m.get("fsync_p99_ms"), m.get("slow_fsyncs") or 0
        if (fsync is not None and fsync > FSYNC_P99_MS) or slow:
            advice.append(
                Advice(
                    f"etcd member {name}'s WAL fsync p99 is at least {fsync or 0:.0f} ms"
                    + (f", {slow} over 1 s" if slow else ""),
                    "a slow disk makes Raft heartbeats time out and leaders change; "
                    "give etcd an SSD of its own",
                )
            )
        commit = m.get("commit_p99_ms")
        if commit is not None and commit > COMMIT_P99_MS:
            advice.append(
                Advice(
                    f"etcd member {name}'s backend commit p99 is at least {commit:.0f} ms",
                    "a slow disk: give etcd an SSD of its own",
                )
            )
    if leader_changes_last_hour is not None and leader_changes_last_hour >= LEADER_CHANGES_PER_HOUR:
        advice.append(
            Advice(
                f"the etcd cluster changed its leader {leader_changes_last_hour} times in the "
                "last hour",
                "elections follow slow disks and round trips between members near the "
                "election timeout; see the members' figures",
            )
        )
    return advice


def raft_round_trip(
    between: str, rtt: float, heartbeat_ms: float, election_ms: float
) -> Advice | None:
    """Raft's round trip between two members against the election timeout (a tenth of it:
    leaders get lost) and the heartbeat interval (half of it: near). etcd's guide: the
    heartbeat interval about the round trip, the election timeout at least ten times it."""
    what = f"the Raft round trip {between} reaches at least {rtt:.0f} ms (p99), "
    now = f"(now {heartbeat_ms:g} and {election_ms:g} ms)"
    if rtt >= election_ms / 10:
        return Advice(
            what + f"more than a tenth of the election timeout ({election_ms:.0f} ms)",
            f"leaders will be lost: set etcd's --heartbeat-interval to about "
            f"{max(rtt, heartbeat_ms):.0f} ms and --election-timeout to at least "
            f"{10 * rtt:.0f} ms on every member {now}, or put the members closer",
        )
    if rtt >= heartbeat_ms / 2:
        return Advice(
            what + f"near the heartbeat interval ({heartbeat_ms:.0f} ms)",
            "if it grows, set etcd's --heartbeat-interval to about the round trip and "
            f"--election-timeout to at least ten times it on every member {now}",
        )
    return None
