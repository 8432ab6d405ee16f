"""A small asyncio etcd v3 client speaking gRPC, as etcdctl, flanneld and every etcd client
do, so that it works wherever they work: TLS with etcd's --client-cert-auth whatever the key
usage of etcd's own server certificate, users taken from the client certificate's CN, user
and password, several endpoints with failover.

Shaped as etcd's own Go client (client/v3): KV, Lease, Watch and Cluster/Maintenance over one
transport (etcd/transport.py: the member in use, failover, authentication). gRPC itself is
h2 (HTTP/2, sans-IO) plus etcd's .proto messages (etcd/channel.py, etcd/grpc_wire.py,
etcd/proto/); why not grpcio: the README's "etcd" section, with figures.
"""

from __future__ import annotations

from pyflannel.etcd.cluster import Cluster, MemberStatus
from pyflannel.etcd.kv import KV, KeyValue, prefix_end
from pyflannel.etcd.leadership import LeaderLog
from pyflannel.etcd.leases import Leases
from pyflannel.etcd.tls import TLSFiles
from pyflannel.etcd.transport import EtcdError, EtcdUnavailable, Transport
from pyflannel.etcd.watch import (
    MEMBER_CHECK_INTERVAL,
    RevisionCompacted,
    Watcher,
    WatchEvent,
    WatchResponse,
)
from pyflannel.subnet.stores import Endpoint

__all__ = [
    "MEMBER_CHECK_INTERVAL",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "MemberStatus",
    "RevisionCompacted",
    "TLSFiles",
    "WatchEvent",
    "WatchResponse",
    "prefix_end",
]


class EtcdClient(KV, Leases, Watcher, Cluster):
    def __init__(
        self,
        endpoints: list[str],
        *,
        username: str = "",
        password: str = "",
        tls: TLSFiles | None = None,
        timeout: float = 5.0,
    ):
        self.transport = Transport(
            endpoints, username=username, password=password, tls=tls, timeout=timeout
        )
        self.leaders = LeaderLog()
        self.status_rtt_ms: float | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.transport.endpoint

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.transport.endpoints

    @property
    def timeout(self) -> float:
        return self.transport.timeout

    async def close(self) -> None:
        await self.transport.close()
