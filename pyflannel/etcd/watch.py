"""etcd's Watch service: every change under a prefix from a revision on, one etcd response at
a time, with etcd's require-leader option and progress notifications.

An idle watch checks its member every MEMBER_CHECK_INTERVAL with a status call on the same
connection: no answer within MEMBER_CHECK_DEADLINE is a frozen (or gone) member (a frozen
process's kernel still acknowledges TCP), and an answer without a leader is a member cut off
from its cluster, which etcd's own require-leader cancellation reports only after three
election timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pyflannel.errors import StoreUnavailable
from pyflannel.etcd.channel import Call, CallFailed, ChannelClosed
from pyflannel.etcd.cluster import Cluster
from pyflannel.etcd.grpc_wire import Status, StatusCode
from pyflannel.etcd.kv import KeyValue, prefix_end
from pyflannel.etcd.proto import kv_pb2, rpc_pb2
from pyflannel.etcd.transport import EtcdUnavailable
from pyflannel.subnet.stores import Endpoint

WATCH = "/etcdserverpb.Watch/Watch"
REQUIRE_LEADER = ("hasleader", "true")
MEMBER_CHECK_INTERVAL = 1.0  # seconds a watch may be silent before its member is checked
MEMBER_CHECK_DEADLINE = 2.0  # seconds the member has to answer that check


class RevisionCompacted(StoreUnavailable):
    """A watch asked for history etcd has already compacted; re-list and diff."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "put" | "delete"
    kv: KeyValue


@dataclass(frozen=True)
class WatchResponse:
    revision: int  # everything up to here has been delivered (0 for ``created``)
    events: list[WatchEvent]
    created: bool = False  # the watch is established; events from start_revision follow


def _unavailable(message: str) -> CallFailed:
    return CallFailed(Status(StatusCode.UNAVAILABLE, message))


def watch_response(reply: rpc_pb2.WatchResponse) -> WatchResponse:
    """One etcd answer as the lease watch reads it (pure)."""
    if reply.compact_revision:
        raise RevisionCompacted(reply.compact_revision)
    if reply.canceled:
        raise _unavailable(reply.cancel_reason or "watch canceled by the server")
    if reply.created and not reply.events:
        # Its header revision is the store's, not how far we have been sent: resuming
        # from it could skip events still in flight.
        return WatchResponse(0, [], created=True)
    return WatchResponse(
        reply.header.revision,
        [
            WatchEvent("delete" if ev.type == kv_pb2.Event.DELETE else "put", KeyValue.of(ev.kv))
            for ev in reply.events
        ],
    )


class Watcher(Cluster):
    """The watch checks its member with the Cluster part's status (which also notes the
    leader it names)."""

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[WatchResponse]:
        """Every change under ``prefix`` from ``start_revision`` on, one etcd response at a time.

        Raises RevisionCompacted if that revision is gone, EtcdUnavailable when the stream
        breaks, the member stops answering, or it has no leader (require-leader), so that the
        caller resumes from its last revision + 1, possibly on another member.
        """
        transport = self.transport
        ep, generation = transport.endpoint, transport.generation
        create = rpc_pb2.WatchCreateRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
        call: Call | None = None
        try:
            async with transport.calling(generation, ep, transport.timeout):
                # Establishing the stream is bounded like any call: a connection attempt made
                # while the network was cut can otherwise wait for TCP's SYN retries (minutes).
                async with asyncio.timeout(transport.timeout):
                    channel = await transport.channel(ep, generation)
                    call = channel.start(WATCH, transport.metadata(REQUIRE_LEADER))
                    await call.send(rpc_pb2.WatchRequest(create_request=create).SerializeToString())
                    message = await call.receive()
                while True:
                    yield watch_response(rpc_pb2.WatchResponse.FromString(message))
                    message = await self._next_message(call, generation, ep)
        finally:
            if call is not None:
                call.cancel()

    async def _next_message(self, call: Call, generation: int, ep: Endpoint) -> bytes:
        """The watch's next message; while it is silent, its member is checked every
        MEMBER_CHECK_INTERVAL (frozen: no answer; cut off: no leader)."""
        transport = self.transport
        while True:
            try:
                async with asyncio.timeout(MEMBER_CHECK_INTERVAL):
                    return await call.receive()
            except TimeoutError:
                pass
            if generation != transport.generation:
                raise ChannelClosed("the client moved to another member")
            deadline = min(transport.timeout, MEMBER_CHECK_DEADLINE)
            try:
                status = await self.status(timeout=deadline)
            except EtcdUnavailable as e:
                why = str(e).removeprefix(f"etcd at {ep.url}: ")
                raise ChannelClosed(
                    f"the member stopped answering its status check ({why})"
                ) from None
            if not status.leader:
                raise _unavailable("etcdserver: no leader (the member is cut off from its cluster)")
