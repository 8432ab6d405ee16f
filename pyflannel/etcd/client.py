"""A small asyncio etcd v3 client over etcd's JSON gateway (HTTP/1.1, ``/v3/...``).

Why not gRPC: the same v3 API is served as JSON on every member's client port (etcd >= 3.4),
and speaking it over HTTP/1.1 with h11 costs ~1 MB and ~5 ms of imports where grpc + aetcd +
protobuf cost ~14 MB and ~35 ms (bench/README, "start-up and footprint"). What the daemon needs
of the client, it has: per-call timeouts, several endpoints with failover, TLS with client
certificates, user/password auth, conditional writes, leases, and watches that yield whole
responses (header revision, ``canceled``, compaction) with etcd's require-leader option.

gRPC's HTTP/2 pings found a frozen member; here an idle watch asks its member for its status
every MEMBER_CHECK_INTERVAL: no answer within MEMBER_CHECK_DEADLINE is a frozen (or gone)
member, and an answer without a leader is a member cut off from its cluster, which etcd's own
require-leader cancellation would report only after three election timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pyflannel.errors import StoreError, StoreUnavailable
from pyflannel.etcd.http import Connection, HttpClosed, Stream
from pyflannel.etcd.leadership import LeaderLog
from pyflannel.subnet.stores import Endpoint, parse_endpoint

log = logging.getLogger(__name__)

# gRPC codes (the gateway reports them as "code") that mean "this member cannot serve us
# now": try again, maybe elsewhere. CANCELLED, DEADLINE_EXCEEDED, UNKNOWN, RESOURCE_EXHAUSTED,
# ABORTED, INTERNAL, UNAVAILABLE.
_UNAVAILABLE = {1, 2, 4, 8, 10, 13, 14}
_UNAUTHENTICATED = 16
_REQUIRE_LEADER = ("Grpc-Metadata-Hasleader", "true")

MEMBER_CHECK_INTERVAL = 1.0  # seconds a watch may be silent before its member is checked
MEMBER_CHECK_DEADLINE = 2.0  # seconds the member has to answer that check


class EtcdUnavailable(StoreUnavailable):
    """etcd could not be reached (or timed out); the caller retries with backoff."""


class EtcdError(StoreError):
    """etcd answered, but refused the request (permission, bad request, ...)."""


class RevisionCompacted(StoreUnavailable):
    """A watch asked for history etcd has already compacted; re-list and diff."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


class _Refused(Exception):
    """etcd's answer was an error: its gRPC code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TLSFiles:
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "put" | "delete"
    kv: KeyValue


@dataclass(frozen=True)
class WatchResponse:
    revision: int  # everything up to here has been delivered (0 for ``created``)
    events: list[WatchEvent]
    created: bool = False  # the watch is established; events from start_revision follow


@dataclass(frozen=True)
class MemberStatus:
    version: str
    member_id: int
    leader: int  # 0: the member knows no leader
    revision: int
    raft_term: int


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"
    b[-1] += 1
    return bytes(b)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _int(value) -> int:
    """int64 fields come as JSON strings, and are left out when zero."""
    return int(value or 0)


def _kv(kv: dict) -> KeyValue:
    return KeyValue(
        base64.b64decode(kv.get("key", "")),
        base64.b64decode(kv.get("value", "")),
        _int(kv.get("mod_revision")),
        _int(kv.get("create_revision")),
        _int(kv.get("version")),
        _int(kv.get("lease")),
    )


def _revision(reply: dict) -> int:
    return _int(reply.get("header", {}).get("revision"))


def _error_of(message: dict) -> _Refused | None:
    """The error in a gateway answer: ``{"error": "...", "code": N}`` for unary calls,
    ``{"error": {"grpc_code": N, "message": "..."}}`` inside streams."""
    error = message.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return _Refused(_int(error.get("grpc_code", 2)), str(error.get("message", error)))
    return _Refused(_int(message.get("code", 2)), str(message.get("message") or error))


def _decode(status: int, body: bytes) -> dict:
    try:
        reply = json.loads(body)
    except ValueError:
        # Not etcd's gateway: a proxy's page, a half-written answer. This member cannot serve.
        raise _Refused(14, f"HTTP {status}, not JSON: {body[:80]!r}") from None
    if not isinstance(reply, dict):
        raise _Refused(14, f"HTTP {status}, not a JSON object: {body[:80]!r}")
    error = _error_of(reply)
    if error is not None:
        raise error
    if status != 200:
        raise _Refused(14, f"HTTP {status}: {body[:80]!r}")
    return reply


def _txn_compare(key: bytes, mod_revision: int) -> dict:
    return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(mod_revision)}


class EtcdClient:
    def __init__(
        self,
        endpoints: list[str],
        *,
        username: str = "",
        password: str = "",
        tls: TLSFiles | None = None,
        timeout: float = 5.0,
    ):
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.username, self.password = username, password
        self.tls = tls or TLSFiles()
        self.timeout = timeout
        self._current = 0
        # Every failover starts a new generation: connections of an older one are closed,
        # and a call that failed on an older one does not move the client again.
        self._generation = 0
        self._idle: list[Connection] = []  # kept-alive connections to the current member
        self._open: set[Connection] = set()  # every connection of this generation
        self._token: str | None = None
        self._connecting = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None
        self.leaders = LeaderLog()  # the leaders status answers named
        self.status_rtt_ms: float | None = None  # the last status answer's round trip

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._current]

    # -- connection management -------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=self.tls.cafile or None)
            if self.tls.certfile:
                context.load_cert_chain(self.tls.certfile, self.tls.keyfile or None)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    async def _dial(self, ep: Endpoint) -> Connection:
        host, _, port = ep.target.rpartition(":")
        conn = await Connection.open(host, int(port), self._tls_context() if ep.tls else None)
        self._open.add(conn)
        return conn

    async def _connection(self, ep: Endpoint, generation: int) -> Connection:
        """A connection to the current member, authenticated: an idle kept-alive one, or a
        new one. Authentication happens under one lock, so that concurrent first calls share
        one token."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.reader.at_eof():
                return conn
            self._forget(conn)
        if self.username and self._token is None:
            async with self._connecting:
                if self._token is None and generation == self._generation:
                    self._token = await self._authenticate(ep)
        moved = HttpClosed("connection closed (the client moved to another member)")
        if generation != self._generation:
            # Another call moved the client meanwhile (and forgot the token, which belongs
            # to a member): going on would send a request without credentials.
            raise moved
        fresh = await self._dial(ep)
        if generation != self._generation or (self.username and self._token is None):
            self._forget(fresh)
            raise moved
        return fresh

    async def _authenticate(self, ep: Endpoint) -> str:
        conn = await self._dial(ep)
        try:
            body = json.dumps({"name": self.username, "password": self.password}).encode()
            reply = _decode(*await conn.request("/v3/auth/authenticate", body, []))
        finally:
            self._forget(conn)
        return str(reply.get("token", ""))

    def _headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        token = [("Authorization", self._token)] if self._token else []
        return [*token, *extra]

    def _forget(self, conn: Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def _release(self, conn: Connection, generation: int) -> None:
        if generation == self._generation and conn.reusable:
            self._idle.append(conn)
        else:
            self._forget(conn)

    def _drop_connections(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    async def _failover(self, generation: int) -> None:
        """Forget the member that generation was talking to (closing its connections, a watch
        on it included); the next call dials the next endpoint. Calls that broke because
        another call already failed over do not move again."""
        if generation != self._generation:
            return
        self._generation += 1
        self._drop_connections()
        self._token = None
        self._next_endpoint()

    def _next_endpoint(self) -> None:
        if len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("etcd: switching to endpoint %s", self.endpoint.url)

    @contextlib.asynccontextmanager
    async def _calling(self, generation: int, ep: Endpoint, timeout: float):
        """What every call does on failure: move to the next member when this one cannot
        serve, re-authenticate after an expired token, and turn errors into ours."""
        try:
            yield
        except _Refused as e:
            message = str(e).strip()
            if e.code in _UNAVAILABLE:
                await self._failover(generation)
                raise EtcdUnavailable(f"etcd at {ep.url}: {message}") from None
            if e.code == _UNAUTHENTICATED:
                if self.username and generation == self._generation:
                    self._token = None  # expired: authenticate again on the next call
                raise EtcdError(f"etcd at {ep.url} refused the credentials: {message}") from None
            raise EtcdError(f"etcd at {ep.url}: {message}") from None
        except TimeoutError:
            await self._failover(generation)
            raise EtcdUnavailable(f"etcd at {ep.url}: no answer within {timeout:g} s") from None
        except (OSError, HttpClosed) as e:
            await self._failover(generation)
            raise EtcdUnavailable(f"etcd at {ep.url}: {_describe(e, ep)}") from None

    async def _call(self, path: str, request: dict, *, timeout: float | None = None) -> dict:
        """One unary call: POST the request to the gateway path, its JSON answer."""
        timeout = timeout or self.timeout
        ep, generation = self.endpoint, self._generation
        body = json.dumps(request, separators=(",", ":")).encode()
        async with self._calling(generation, ep, timeout), asyncio.timeout(timeout):
            conn = await self._connection(ep, generation)
            try:
                status, data = await conn.request(path, body, self._headers())
            except (HttpClosed, ConnectionResetError, BrokenPipeError):
                self._forget(conn)
                if conn.exchanges == 1:
                    raise
                # A kept-alive connection the member closed meanwhile: one fresh try.
                conn = await self._dial(ep)
                status, data = await conn.request(path, body, self._headers())
            except BaseException:
                self._forget(conn)
                raise
            self._release(conn, generation)
            return _decode(status, data)

    async def close(self) -> None:
        self._drop_connections()

    # -- KV --------------------------------------------------------------------------------

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        reply = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs", [])
        return (_kv(kvs[0]) if kvs else None), _revision(reply)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        request = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        reply = await self._call("/v3/kv/range", request, timeout=self.timeout * 4)
        return [_kv(kv) for kv in reply.get("kvs", [])], _revision(reply)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        request = {"key": _b64(key), "value": _b64(value), "lease": str(lease)}
        return _revision(await self._call("/v3/kv/put", request))

    async def delete(self, key: bytes) -> int:
        reply = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return _int(reply.get("deleted"))

    async def put_if(
        self, key: bytes, value: bytes, *, lease: int, mod_revision: int
    ) -> int | None:
        """Put only if the key's mod_revision is ``mod_revision`` (0: the key must not exist).

        Returns the new revision, or None if the condition failed (someone else wrote it).
        """
        put = {"key": _b64(key), "value": _b64(value), "lease": str(lease)}
        request = {
            "compare": [_txn_compare(key, mod_revision)],
            "success": [{"request_put": put}],
        }
        reply = await self._call("/v3/kv/txn", request)
        return _revision(reply) if reply.get("succeeded") else None

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        request = {
            "compare": [_txn_compare(key, mod_revision)],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        }
        return bool((await self._call("/v3/kv/txn", request)).get("succeeded"))

    async def txn(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> int:
        """Unconditional puts and deletes in one transaction (one revision); that revision."""
        ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts]
        ops += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        return _revision(await self._call("/v3/kv/txn", {"success": ops}, timeout=timeout))

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision)})

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        """A new etcd lease: (ID, TTL). ``lease_id`` 0 lets etcd choose the ID; a chosen one
        that exists already is an EtcdError saying so."""
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl), "ID": str(lease_id)})
        if reply.get("error"):
            raise EtcdError(f"etcd refused a {ttl}s lease: {reply['error']}")
        return _int(reply.get("ID")), _int(reply.get("TTL"))

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    async def time_to_live(self, lease_id: int, keys: bool = False) -> tuple[int, list[bytes]]:
        """Seconds left on a lease (-1 if it does not exist) and, optionally, its keys."""
        reply = await self._call("/v3/lease/timetolive", {"ID": str(lease_id), "keys": keys})
        return _int(reply.get("TTL")), [base64.b64decode(k) for k in reply.get("keys", [])]

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease once; return its new TTL, or 0 if etcd no longer has it."""
        reply = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, timeout=timeout)
        result = reply.get("result", {})  # the answer of a stream of one request
        return max(_int(result.get("TTL")), 0)

    # -- cluster ---------------------------------------------------------------------------

    async def status(self, timeout: float | None = None) -> MemberStatus:
        started = time.perf_counter()
        reply = await self._call("/v3/maintenance/status", {}, timeout=timeout)
        self.status_rtt_ms = (time.perf_counter() - started) * 1000
        header = reply.get("header", {})
        status = MemberStatus(
            version=str(reply.get("version", "")),
            member_id=_int(header.get("member_id")),
            leader=_int(reply.get("leader")),
            revision=_int(header.get("revision")),
            raft_term=_int(reply.get("raftTerm")),
        )
        if self.leaders.observe(status.leader, time.time()):
            log.info("etcd: the cluster elected a new leader (%x)", status.leader)
        return status

    async def members(self) -> list[dict]:
        """The cluster's members as the current member sees them, the leader marked, and each
        member's own view: its round trip from here, the leader it knows, what its /metrics
        say (leader changes and slow applies since it started, slow WAL fsyncs, the p99 of
        fsync and commit, the Raft round trip to each peer)."""
        reply = await self._call("/v3/cluster/member/list", {})
        leader = (await self.status()).leader
        members = reply.get("members", [])
        looks = await asyncio.gather(*(self._look_at(m.get("clientURLs", [])) for m in members))
        return [
            {
                "name": m.get("name", ""),
                "id": f"{_int(m.get('ID')):x}",
                "client_urls": list(m.get("clientURLs", [])),
                "leader": leader == _int(m.get("ID")),
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
        member = EtcdClient(
            urls[:1],
            username=self.username,
            password=self.password,
            tls=self.tls,
            timeout=timeout,
        )
        try:
            return await self._looking(member, timeout)
        finally:
            await member.close()

    @staticmethod
    async def _looking(member: EtcdClient, timeout: float) -> dict:
        rtts = []
        try:
            async with asyncio.timeout(timeout):
                for _ in range(3):
                    status = await member.status()
                    assert member.status_rtt_ms is not None
                    rtts.append(member.status_rtt_ms)
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
                health = parse_member_health(await member._metrics())
        except (OSError, HttpClosed, TimeoutError) as e:
            look["metrics_error"] = _describe(e, member.endpoint)
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

    async def _metrics(self) -> str:
        """The member's Prometheus text (/metrics needs no authentication)."""
        conn = await self._dial(self.endpoint)
        try:
            status, body = await conn.get("/metrics")
        finally:
            self._forget(conn)
        if status != 200:
            raise HttpClosed(f"/metrics answered HTTP {status}")
        return body.decode(errors="replace")

    # -- watch -----------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[WatchResponse]:
        """Every change under ``prefix`` from ``start_revision`` on, one etcd response at a time.

        Raises RevisionCompacted if that revision is gone, EtcdUnavailable when the stream
        breaks, the member stops answering, or it has no leader (require-leader), so that the
        caller resumes from its last revision + 1, possibly on another member.
        """
        ep, generation = self.endpoint, self._generation
        create = {
            "key": _b64(prefix),
            "range_end": _b64(prefix_end(prefix)),
            "start_revision": str(start_revision),
            "progress_notify": True,
        }
        conn: Connection | None = None
        try:
            async with self._calling(generation, ep, self.timeout):
                # Establishing the stream is bounded like any call: a connection attempt made
                # while the network was cut can otherwise wait for TCP's SYN retries (minutes).
                async with asyncio.timeout(self.timeout):
                    conn = await self._connection(ep, generation)
                    headers = self._headers(_REQUIRE_LEADER)
                    stream = await Stream.open(
                        conn, "/v3/watch", headers, {"create_request": create}
                    )
                    message = await stream.receive()
                while True:
                    response = self._watch_response(message, stream)
                    if response is not None:
                        yield response
                    message = await self._next_message(stream, generation, ep)
        finally:
            if conn is not None:
                self._forget(conn)

    def _watch_response(self, message: dict, stream: Stream) -> WatchResponse | None:
        error = _error_of(message)
        if error is not None:
            raise error
        if stream.status != 200 or "result" not in message:
            raise _Refused(14, f"HTTP {stream.status}: {json.dumps(message)[:80]}")
        result = message["result"]
        if _int(result.get("compact_revision")):
            raise RevisionCompacted(_int(result["compact_revision"]))
        if result.get("canceled"):
            raise _Refused(14, result.get("cancel_reason") or "watch canceled by the server")
        events = result.get("events", [])
        if result.get("created") and not events:
            # Its header revision is the store's, not how far we have been sent: resuming
            # from it could skip events still in flight.
            return WatchResponse(0, [], created=True)
        return WatchResponse(
            _revision(result),
            [
                WatchEvent("delete" if ev.get("type") == "DELETE" else "put", _kv(ev["kv"]))
                for ev in events
            ],
        )

    async def _next_message(self, stream: Stream, generation: int, ep: Endpoint) -> dict:
        """The watch's next message; while it is silent, its member is checked every
        MEMBER_CHECK_INTERVAL (frozen: no answer; cut off: no leader)."""
        while True:
            try:
                async with asyncio.timeout(MEMBER_CHECK_INTERVAL):
                    return await stream.receive()
            except TimeoutError:
                pass
            if generation != self._generation:
                raise HttpClosed("connection closed (the client moved to another member)")
            deadline = min(self.timeout, MEMBER_CHECK_DEADLINE)
            try:
                status = await self.status(timeout=deadline)
            except EtcdUnavailable as e:
                why = str(e).removeprefix(f"etcd at {ep.url}: ")
                raise HttpClosed(f"the member stopped answering its status check ({why})") from None
            if not status.leader:
                raise _Refused(14, "etcdserver: no leader (the member is cut off from its cluster)")


def _describe(e: BaseException, ep: Endpoint) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, ConnectionRefusedError):
        text = "connection refused"
    if ep.tls and (isinstance(e, ssl.SSLError) or "SSL" in text or "certificate" in text):
        text += " (TLS failed: check --etcd-cafile, --etcd-certfile and --etcd-keyfile)"
    return text
