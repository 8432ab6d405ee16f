"""A small asyncio etcd v3 client on aetcd's generated gRPC stubs.

Why not ``aetcd.Client`` itself: its watcher hands out single events and drops what a
correct lease watch needs (the response's header revision for resuming, ``canceled`` and
its reason, progress notifications), it cannot ask for etcd's require-leader watch option,
and it dials one plaintext address. This module keeps aetcd's stubs and protobufs and adds:
per-call timeouts, several endpoints with failover, TLS, user/password auth, and watches that
yield whole responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from aetcd import rpc

from pyflannel.errors import StoreError, StoreUnavailable
from pyflannel.subnet.stores import Endpoint, parse_endpoint

log = logging.getLogger(__name__)

# gRPC codes that mean "this member cannot serve us now": try again, maybe elsewhere.
# INTERNAL included: a member shutting down mid-stream surfaces as "Internal error from Core".
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
}
# Detect a dead or frozen member on an idle watch within ~15 s (etcd accepts pings >= 5 s).
# A frozen process's kernel still ACKs TCP, so only an unanswered HTTP/2 PING tells; current
# gRPC cores enforce that through ping_timeout_ms (keepalive_timeout_ms alone never fired).
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 << 20),
)
_REQUIRE_LEADER = ("hasleader", "true")


class EtcdUnavailable(StoreUnavailable):
    """etcd could not be reached (or timed out); the caller retries with backoff."""


class EtcdError(StoreError):
    """etcd answered, but refused the request (permission, bad request, ...)."""


class RevisionCompacted(StoreUnavailable):
    """A watch asked for history etcd has already compacted; re-list and diff."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


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


def _channel_closed_under_us() -> bool:
    """grpc.aio raises CancelledError in calls on a channel that is being closed (another call
    failed over). Unless our task itself is being cancelled, that is a broken connection."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _kv(kv) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"
    b[-1] += 1
    return bytes(b)


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
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._connecting = asyncio.Lock()

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._current]

    # -- connection management -------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls.cafile),
            private_key=read(self.tls.keyfile),
            certificate_chain=read(self.tls.certfile),
        )

    async def _ensure_channel(self) -> grpc.aio.Channel:
        """The channel to the current member, authenticated. Connecting and authenticating
        happen under one lock and the channel is published only when its token is there: a
        concurrent call never uses it without one (and so never drops it, with its caller's
        authentication still under way, for an UNAUTHENTICATED answer)."""
        if self._channel is not None:
            return self._channel
        async with self._connecting:
            if self._channel is not None:
                return self._channel
            ep = self.endpoint
            if ep.tls:
                channel = grpc.aio.secure_channel(
                    ep.target, self._credentials(), options=_CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(ep.target, options=_CHANNEL_OPTIONS)
            token = None
            if self.username:
                try:
                    resp = await rpc.AuthStub(channel).Authenticate(
                        rpc.AuthenticateRequest(name=self.username, password=self.password),
                        timeout=self.timeout,
                    )
                except grpc.aio.AioRpcError as e:
                    await channel.close(grace=None)
                    if e.code() in _UNAVAILABLE:
                        self._next_endpoint()
                    raise self._translate(e, ep) from None
                except BaseException:
                    await channel.close(grace=None)
                    raise
                token = resp.token
            self._channel, self._token = channel, token
            return channel

    def _metadata(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        token = (("token", self._token),) if self._token else ()
        return token + extra

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def _failover(self, failed: grpc.aio.Channel | None) -> None:
        """Forget the member ``failed`` was talking to; the next call dials the next endpoint.
        Calls that broke because another call already failed over do not move again."""
        if failed is not self._channel:
            return
        await self._drop_channel()
        self._next_endpoint()

    def _next_endpoint(self) -> None:
        if len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("etcd: switching to endpoint %s", self.endpoint.url)

    def _translate(self, e: grpc.aio.AioRpcError, ep: Endpoint) -> StoreError | StoreUnavailable:
        details = (e.details() or e.code().name).strip()
        if ep.tls and any(s in details for s in ("TSI_", "SSL", "andshake")):
            details += " (TLS failed: check --etcd-cafile, --etcd-certfile and --etcd-keyfile)"
        if e.code() in _UNAVAILABLE:
            return EtcdUnavailable(f"etcd at {ep.url}: {details}")
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            return EtcdError(f"etcd at {ep.url} refused the credentials: {details}")
        return EtcdError(f"etcd at {ep.url}: {details}")

    @contextlib.asynccontextmanager
    async def _calling(self, channel: grpc.aio.Channel, ep: Endpoint):
        """What every call does on failure: move to the next member when this one cannot
        serve, re-authenticate after an expired token, and turn gRPC's errors into ours."""
        try:
            yield
        except grpc.aio.AioRpcError as e:
            if e.code() in _UNAVAILABLE:
                await self._failover(channel)
            elif (
                e.code() == grpc.StatusCode.UNAUTHENTICATED
                and self.username
                and channel is self._channel
            ):
                await self._drop_channel()  # token expired: re-authenticate on the next call
            raise self._translate(e, ep) from None
        except TimeoutError:
            await self._failover(channel)
            raise EtcdUnavailable(
                f"etcd at {ep.url}: no answer within {self.timeout:.0f} s"
            ) from None
        except asyncio.CancelledError:
            if _channel_closed_under_us():
                raise EtcdUnavailable(
                    f"etcd at {ep.url}: connection closed (moving member)"
                ) from None
            raise

    async def _call(self, stub_type, method: str, request, *, timeout: float | None = None):
        channel = await self._ensure_channel()
        async with self._calling(channel, self.endpoint):
            return await getattr(stub_type(channel), method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata()
            )

    async def close(self) -> None:
        await self._drop_channel()

    # -- KV --------------------------------------------------------------------------------

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        resp = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key))
        return (_kv(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        req = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        resp = await self._call(rpc.KVStub, "Range", req, timeout=self.timeout * 4)
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self._call(
            rpc.KVStub, "Put", rpc.PutRequest(key=key, value=value, lease=lease)
        )
        return resp.header.revision

    async def delete(self, key: bytes) -> int:
        resp = await self._call(rpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest(key=key))
        return resp.deleted

    async def put_if(
        self, key: bytes, value: bytes, *, lease: int, mod_revision: int
    ) -> int | None:
        """Put only if the key's mod_revision is ``mod_revision`` (0: the key must not exist).

        Returns the new revision, or None if the condition failed (someone else wrote it).
        """
        compare = rpc.Compare(
            key=key,
            result=rpc.Compare.CompareResult.EQUAL,
            target=rpc.Compare.CompareTarget.MOD,
            mod_revision=mod_revision,
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))
        resp = await self._call(rpc.KVStub, "Txn", rpc.TxnRequest(compare=[compare], success=[put]))
        return resp.header.revision if resp.succeeded else None

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        compare = rpc.Compare(
            key=key,
            result=rpc.Compare.CompareResult.EQUAL,
            target=rpc.Compare.CompareTarget.MOD,
            mod_revision=mod_revision,
        )
        op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        resp = await self._call(rpc.KVStub, "Txn", rpc.TxnRequest(compare=[compare], success=[op]))
        return resp.succeeded

    async def txn(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> int:
        """Unconditional puts and deletes in one transaction (one revision); that revision."""
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in puts]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
        resp = await self._call(rpc.KVStub, "Txn", rpc.TxnRequest(success=ops), timeout=timeout)
        return resp.header.revision

    async def compact(self, revision: int) -> None:
        await self._call(rpc.KVStub, "Compact", rpc.CompactionRequest(revision=revision))

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        """A new etcd lease: (ID, TTL). ``lease_id`` 0 lets etcd choose the ID; a chosen one
        that exists already is an EtcdError saying so."""
        resp = await self._call(
            rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        )
        if resp.error:
            raise EtcdError(f"etcd refused a {ttl}s lease: {resp.error}")
        return resp.ID, resp.TTL

    async def revoke(self, lease_id: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._call(rpc.LeaseStub, "LeaseRevoke", req)
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    async def time_to_live(self, lease_id: int, keys: bool = False) -> tuple[int, list[bytes]]:
        """Seconds left on a lease (-1 if it does not exist) and, optionally, its keys."""
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        resp = await self._call(rpc.LeaseStub, "LeaseTimeToLive", req)
        return resp.TTL, list(resp.keys)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease once; return its new TTL, or 0 if etcd no longer has it."""
        channel = await self._ensure_channel()
        ep = self.endpoint
        call = rpc.LeaseStub(channel).LeaseKeepAlive(
            timeout=timeout or self.timeout, metadata=self._metadata()
        )
        try:
            async with self._calling(channel, ep):
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise EtcdUnavailable(f"etcd at {ep.url}: keepalive stream closed")
        return max(resp.TTL, 0)

    # -- cluster ---------------------------------------------------------------------------

    async def status(self):
        return await self._call(rpc.MaintenanceStub, "Status", rpc.StatusRequest())

    async def members(self) -> list[dict]:
        """The cluster's members as the current member sees them, with the leader marked."""
        members = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
        leader = (await self.status()).leader
        return [
            {
                "name": m.name,
                "id": f"{m.ID:x}",
                "client_urls": list(m.clientURLs),
                "leader": leader == m.ID,
            }
            for m in members.members
        ]

    # -- watch -----------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[WatchResponse]:
        """Every change under ``prefix`` from ``start_revision`` on, one etcd response at a time.

        Raises RevisionCompacted if that revision is gone, EtcdUnavailable when the stream
        breaks or the member loses its leader (require-leader), so that the caller resumes
        from its last revision + 1, possibly on another member.
        """
        channel = await self._ensure_channel()
        ep = self.endpoint
        call = rpc.WatchStub(channel).Watch(metadata=self._metadata(_REQUIRE_LEADER))
        create = rpc.WatchCreateRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
        try:
            async with self._calling(channel, ep):
                # Establishing the stream is bounded like any call: a connection attempt made
                # while the network was cut can otherwise wait for TCP's SYN retries (minutes).
                await asyncio.wait_for(
                    call.write(rpc.WatchRequest(create_request=create)), self.timeout
                )
                established = False
                while True:
                    if established:
                        resp = await call.read()  # idle for hours is fine: HTTP/2 pings watch it
                    else:
                        resp = await asyncio.wait_for(call.read(), self.timeout)
                        established = True
                    if resp is grpc.aio.EOF:
                        raise EtcdUnavailable(f"etcd at {ep.url}: watch stream closed")
                    if resp.compact_revision:
                        raise RevisionCompacted(resp.compact_revision)
                    if resp.canceled:
                        reason = resp.cancel_reason or "watch canceled by the server"
                        raise EtcdUnavailable(f"etcd at {ep.url}: {reason}")
                    if resp.created and not resp.events:
                        # Its header revision is the store's, not how far we have been sent:
                        # resuming from it could skip events still in flight.
                        yield WatchResponse(0, [], created=True)
                        continue
                    yield WatchResponse(
                        resp.header.revision,
                        [
                            WatchEvent(
                                "delete" if ev.type == rpc.Event.EventType.DELETE else "put",
                                _kv(ev.kv),
                            )
                            for ev in resp.events
                        ],
                    )
        finally:
            call.cancel()
