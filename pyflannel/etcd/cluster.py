"""etcd's Cluster and Maintenance services, as a node looks at its etcd: the member's status
(the leader it knows, its revision), the members, and each member's own view (its round trip
from here, the leader it knows, its /metrics)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pyflannel.errors import StoreUnavailable
from pyflannel.etcd.leadership import LeaderLog
from pyflannel.etcd.proto import rpc_pb2
from pyflannel.etcd.tls import client_context
from pyflannel.etcd.transport import Transport

log = logging.getLogger(__name__)

STATUS = "/etcdserverpb.Maintenance/Status"
MEMBER_LIST = "/etcdserverpb.Cluster/MemberList"


@dataclass(frozen=True)
class MemberStatus:
    version: str
    member_id: int
    leader: int  # 0: the member knows no leader
    revision: int
    raft_term: int


async def member_status(transport: Transport, timeout: float | None = None) -> MemberStatus:
    reply = await transport.unary(
        STATUS, rpc_pb2.StatusRequest(), rpc_pb2.StatusResponse, timeout=timeout
    )
    return MemberStatus(
        version=reply.version,
        member_id=reply.header.member_id,
        leader=reply.leader,
        revision=reply.header.revision,
        raft_term=reply.raftTerm,
    )


class Cluster:
    transport: Transport
    leaders: LeaderLog  # the leaders status answers named
    status_rtt_ms: float | None  # the last status answer's round trip

    async def status(self, timeout: float | None = None) -> MemberStatus:
        started = time.perf_counter()
        status = await member_status(self.transport, timeout)
        self.status_rtt_ms = (time.perf_counter() - started) * 1000
        if self.leaders.observe(status.leader, time.time()):
            log.info("etcd: the cluster elected a new leader (%x)", status.leader)
        return status

    async def members(self) -> list[dict]:
        """The cluster's members as the current member sees them, the leader marked, and each
        member's own view: its round trip from here, the leader it knows, what its /metrics
        say (leader changes and slow applies since it started, slow WAL fsyncs, the p99 of
        fsync and commit, the Raft round trip to each peer)."""
        reply = await self.transport.unary(
            MEMBER_LIST, rpc_pb2.MemberListRequest(), rpc_pb2.MemberListResponse
        )
        leader = (await self.status()).leader
        members = list(reply.members)
        looks = await asyncio.gather(*(self._look_at(list(m.clientURLs)) for m in members))
        return [
            {
                "name": m.name,
                "id": f"{m.ID:x}",
                "client_urls": list(m.clientURLs),
                "leader": leader == m.ID,
                **look,
            }
            for m, look in zip(members, looks, strict=True)
        ]

    async def _look_at(self, urls: list[str], timeout: float = 1.0) -> dict:
        """One member, asked directly: three status round trips (the median), then its
        /metrics; each part gets ``timeout`` seconds, so a far or stuck member cannot hold up
        status (which waits 3 s for all of them)."""
        if not urls:
            return {"reachable": False, "error": "no client URL"}
        ours = self.transport
        member = Transport(
            urls[:1], username=ours.username, password=ours.password, tls=ours.tls, timeout=timeout
        )
        try:
            return await _looking(member, timeout)
        finally:
            await member.close()


async def _looking(member: Transport, timeout: float) -> dict:
    rtts = []
    try:
        async with asyncio.timeout(timeout):
            for _ in range(3):
                started = time.perf_counter()
                status = await member_status(member)
                rtts.append((time.perf_counter() - started) * 1000)
    except (StoreUnavailable, TimeoutError) as e:
        return {"reachable": False, "error": str(e) or f"no answer within {timeout:g} s"}
    look: dict = {
        "reachable": True,
        "rtt_ms": sorted(rtts)[1],
        "knows_leader": f"{status.leader:x}" if status.leader else "",
    }
    from pyflannel.etcd.metrics import parse_member_health  # a member check's, not a start's

    try:
        async with asyncio.timeout(timeout):
            text = await asyncio.to_thread(metrics_of, member, timeout)
        health = parse_member_health(text)
    except (OSError, TimeoutError, ValueError) as e:
        look["metrics_error"] = member.describe(e, member.endpoint)
        return look
    look.update(
        leader_changes=health.leader_changes,
        slow_applies=health.slow_applies,
        slow_fsyncs=health.slow_fsyncs,
        fsync_p99_ms=health.fsync_p99_ms,
        commit_p99_ms=health.commit_p99_ms,
        peer_rtt_p99_ms=health.peer_rtt_p99_ms,
    )
    return look


def metrics_of(member: Transport, timeout: float) -> str:
    """The member's Prometheus text: ``GET /metrics`` over HTTP/1.1 on its client port (no
    authentication; its client certificate where TLS asks for one). Blocking: run it in a
    thread."""
    import http.client  # status and doctor only: not a start's

    ep = member.endpoint
    host, _, port = ep.target.rpartition(":")
    host = host.strip("[]")
    conn: http.client.HTTPConnection
    if ep.tls:
        context = client_context(member.tls, alpn="http/1.1")
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
    except http.client.HTTPException as e:  # not HTTP: an OSError like the others here
        raise OSError(f"/metrics: not an HTTP answer ({e!r})") from None
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"/metrics answered HTTP {response.status}")
    return body.decode(errors="replace")
