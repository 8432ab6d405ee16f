"""This node's view of its paths, published beside its lease for `pyflannel status --cluster`
on any node: written only when a path's state changed (at most every few seconds), attached to
the node's lease in the store (it expires with it; no writes to keep it alive)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pyflannel.errors import FlannelError
from pyflannel.ops.mesh.prober import MeshProber
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.manager import SubnetManager

log = logging.getLogger(__name__)

MESH_PUBLISH_INTERVAL = 5.0  # seconds


class MeshPublisher:
    def __init__(
        self,
        prober: MeshProber,
        store: SubnetManager,
        lease: Callable[[], Lease],
        public_ip: Callable[[], object],
        every: float = MESH_PUBLISH_INTERVAL,
    ):
        self.prober = prober
        self.store = store
        self.lease = lease
        self.public_ip = public_ip
        self.every = every
        self.writes = 0  # summaries written (their cost)

    async def run(self) -> None:
        published: dict | None = None
        while True:
            await asyncio.sleep(self.every)
            paths = {subnet: v.state for subnet, v in self.prober.view().items()}
            if paths == published:
                continue
            lease = self.lease()
            summary = {
                "subnet": str(lease.subnet),
                "public_ip": str(self.public_ip()),
                "paths": paths,
            }
            try:
                await self.store.publish_paths(lease, summary)
            except FlannelError as e:
                log.debug("mesh summary not published: %s", e)
                continue
            published = paths
            self.writes += 1
