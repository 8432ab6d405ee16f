"""--site: this node's record published beside its lease, and the other nodes' records
followed, so that each peer is reached as its site says (backend/sites/).

Two loops. ``follow`` reads every record and then watches them (a new node, a node moved, a
key rotated): the peers whose record changed are placed again at once. ``publish`` writes
this node's record when the store does not hold it as it should be (first start, a new lease,
a record lost with an etcd restore or deleted by hand, behind NAT its outside address as the
nodes with addresses of their own see it): no write while it is there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pyflannel.backend.dataplane import DataPlane
from pyflannel.backend.sites.link import SiteLink
from pyflannel.errors import FlannelError
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.manager import SubnetManager

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds before the records are read again after a store failure
# seconds between checks that this node's record is stored as it should be (a read of the
# site link's sessions, no store I/O unless the record must be written)
PUBLISH_CHECK = 2.0


class SiteRecords:
    def __init__(
        self,
        store: SubnetManager,
        plane: DataPlane,
        link: SiteLink,
        lease: Callable[[], Lease],
        members: Callable[[list[str]], Awaitable[None]] | None = None,
    ):
        """``members``: told the network's nodes' addresses on every pass (the traffic rules
        count datagrams to the site port from any other address)."""
        self.store = store
        self.plane = plane
        self.link = link
        self.lease = lease
        self.members = members
        self.read = asyncio.Event()  # the records were read once (peers placed by them)
        self.writes = 0

    async def follow(self) -> None:
        while True:
            try:
                async for stored in self.store.node_records():
                    await self.plane.site_records(stored)
                    self.read.set()
            except FlannelError as e:
                log.info("node records: %s; reading them again in %.0f s", e, RETRY)
            await asyncio.sleep(RETRY)

    async def publish(self) -> None:
        said, said_members = "", ""
        while True:
            await self.plane.site_pass()
            if self.members is not None and self.read.is_set():  # the members known
                try:
                    await self.members(self.link.members())
                    said_members = ""
                except FlannelError as e:
                    if str(e) != said_members:
                        log.warning("site link: strangers not counted: %s; retrying", e)
                        said_members = str(e)
            lease = self.lease()
            wanted = self.link.record(lease)
            if self.link.own_stored != wanted:
                try:
                    await self.store.publish_node(lease, wanted.to_bytes())
                    self.writes += 1
                    said = ""
                    log.info("site %s: published this node's record (%s)", wanted.site, wanted)
                except FlannelError as e:
                    if str(e) != said:
                        log.warning("site %s: record not published: %s; retrying", wanted.site, e)
                        said = str(e)
            await asyncio.sleep(PUBLISH_CHECK)
