"""etcd's KV service: reads, writes, transactions (conditional on a key's mod revision),
compaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyflannel.etcd.proto import kv_pb2, rpc_pb2
from pyflannel.etcd.transport import Transport

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
DELETE_RANGE = "/etcdserverpb.KV/DeleteRange"
TXN = "/etcdserverpb.KV/Txn"
COMPACT = "/etcdserverpb.KV/Compact"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"
    b[-1] += 1
    return bytes(b)


def _mod_revision_is(key: bytes, mod_revision: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key,
        result=rpc_pb2.Compare.EQUAL,
        target=rpc_pb2.Compare.MOD,
        mod_revision=mod_revision,
    )


class KV:
    transport: Transport

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        reply = await self.transport.unary(
            RANGE, rpc_pb2.RangeRequest(key=key), rpc_pb2.RangeResponse
        )
        return (KeyValue.of(reply.kvs[0]) if reply.kvs else None), reply.header.revision

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        request = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        reply = await self.transport.unary(
            RANGE, request, rpc_pb2.RangeResponse, timeout=self.transport.timeout * 4
        )
        return [KeyValue.of(kv) for kv in reply.kvs], reply.header.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        return (await self.transport.unary(PUT, request, rpc_pb2.PutResponse)).header.revision

    async def delete(self, key: bytes) -> int:
        request = rpc_pb2.DeleteRangeRequest(key=key)
        return (
            await self.transport.unary(DELETE_RANGE, request, rpc_pb2.DeleteRangeResponse)
        ).deleted

    async def put_if(
        self, key: bytes, value: bytes, *, lease: int, mod_revision: int
    ) -> int | None:
        """Put only if the key's mod_revision is ``mod_revision`` (0: the key must not exist).

        Returns the new revision, or None if the condition failed (someone else wrote it).
        """
        put = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        request = rpc_pb2.TxnRequest(
            compare=[_mod_revision_is(key, mod_revision)],
            success=[rpc_pb2.RequestOp(request_put=put)],
        )
        reply = await self.transport.unary(TXN, request, rpc_pb2.TxnResponse)
        return reply.header.revision if reply.succeeded else None

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        request = rpc_pb2.TxnRequest(
            compare=[_mod_revision_is(key, mod_revision)],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))],
        )
        return (await self.transport.unary(TXN, request, rpc_pb2.TxnResponse)).succeeded

    async def txn(
        self,
        puts: Sequence[tuple[bytes, bytes]] = (),
        deletes: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> int:
        """Unconditional puts and deletes in one transaction (one revision); that revision."""
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v)) for k, v in puts]
        ops += [
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k))
            for k in deletes
        ]
        request = rpc_pb2.TxnRequest(success=ops)
        reply = await self.transport.unary(TXN, request, rpc_pb2.TxnResponse, timeout=timeout)
        return reply.header.revision

    async def compact(self, revision: int) -> None:
        request = rpc_pb2.CompactionRequest(revision=revision)
        await self.transport.unary(COMPACT, request, rpc_pb2.CompactionResponse)
