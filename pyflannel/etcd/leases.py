"""etcd's Lease service: grant (with an ID of our choosing, if asked), revoke, time to live,
one keep-alive at a time."""

from __future__ import annotations

from pyflannel.etcd.proto import rpc_pb2
from pyflannel.etcd.transport import EtcdError, Transport

GRANT = "/etcdserverpb.Lease/LeaseGrant"
REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
TIME_TO_LIVE = "/etcdserverpb.Lease/LeaseTimeToLive"
KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"  # a stream; used for one request at a time


class Leases:
    transport: Transport

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        """A new etcd lease: (ID, TTL). ``lease_id`` 0 lets etcd choose the ID; a chosen one
        that exists already is an EtcdError saying so."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        reply = await self.transport.unary(GRANT, request, rpc_pb2.LeaseGrantResponse)
        if reply.error:
            raise EtcdError(f"etcd refused a {ttl}s lease: {reply.error}")
        return reply.ID, reply.TTL

    async def revoke(self, lease_id: int) -> None:
        try:
            request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
            await self.transport.unary(REVOKE, request, rpc_pb2.LeaseRevokeResponse)
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    async def time_to_live(self, lease_id: int, keys: bool = False) -> tuple[int, list[bytes]]:
        """Seconds left on a lease (-1 if it does not exist) and, optionally, its keys."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        reply = await self.transport.unary(TIME_TO_LIVE, request, rpc_pb2.LeaseTimeToLiveResponse)
        return reply.TTL, list(reply.keys)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease once; return its new TTL, or 0 if etcd no longer has it."""
        request = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
        reply = await self.transport.unary(
            KEEPALIVE, request, rpc_pb2.LeaseKeepAliveResponse, timeout=timeout
        )
        return max(reply.TTL, 0)
