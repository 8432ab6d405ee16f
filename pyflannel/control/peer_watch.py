"""The lease watch: list at revision R, watch from R+1, never lose an event.

Every event of every etcd response is applied (upstream 0.20 used only the first event of
each). The watch resumes from the last revision seen + 1 after any break, on whichever etcd
member the client reaches; when etcd has compacted that history it re-lists and the lease
table diffs the snapshot against what it knew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pyflannel.control.backoff import Backoff, Outage
from pyflannel.errors import FlannelError, RevisionCompacted
from pyflannel.etcd.registry import Registry
from pyflannel.subnet.event import LeaseEvent
from pyflannel.subnet.table import LeaseTable, PeerChanges

log = logging.getLogger(__name__)


class PeerWatch:
    def __init__(
        self,
        registry: Registry,
        table: LeaseTable,
        on_changes: Callable[[PeerChanges], Awaitable[None]],
        on_own_event: Callable[[LeaseEvent], None] = lambda event: None,
        on_snapshot: Callable[[], None] = lambda: None,
        first_listing: tuple[list, int, list] | None = None,
    ):
        self.registry = registry
        self.table = table
        self.on_changes = on_changes
        self.on_own_event = on_own_event
        self.on_snapshot = on_snapshot
        self.revision: int | None = None  # everything up to here has been applied
        self.restarts = 0  # watch streams re-opened after a break
        self.relists = 0
        self.synced = asyncio.Event()  # set once the first snapshot is applied
        self._first_listing = first_listing  # (leases, revision, skipped) just listed
        self.connected = False  # the watch stream is established right now
        self.last_error = ""

    async def run(self) -> None:
        outage = Outage(log, "etcd unreachable for the lease watch")
        backoff = Backoff(first=0.1, cap=5.0)
        while True:
            try:
                revision = self.revision if self.revision is not None else await self._relist()
                async for batch in self.registry.watch_leases(revision + 1):
                    self.connected = True
                    if outage.ok() is not None:
                        backoff.reset()
                    if batch.created:
                        continue
                    own = [
                        e
                        for e in batch.events
                        if e.subnet is not None and e.subnet == self.table.own
                    ]
                    await self.on_changes(self.table.apply(batch.events))
                    for event in own:
                        self.on_own_event(event)
                    self.revision = batch.revision
            except RevisionCompacted as e:
                log.warning(
                    "lease watch: %s (we were at %s); re-listing all leases", e, self.revision
                )
                self.revision = None
            except FlannelError as e:
                # Unreachable, or refused (auth, permissions, a server error): either way the
                # data plane stays as it is and we keep trying, saying why, never exiting.
                self.connected, self.last_error = False, str(e)
                outage.failed(e, f"resuming the watch after revision {self.revision}")
                self.restarts += 1
                await asyncio.sleep(backoff.next())

    async def _relist(self) -> int:
        if self._first_listing is not None:
            leases, revision, skipped = self._first_listing
            self._first_listing = None
        else:
            leases, revision, skipped = await self.registry.list_leases()
        changes = self.table.reset(leases)
        changes.ignored.extend(skipped)
        await self.on_changes(changes)
        self.revision = revision
        self.relists += 1
        self.synced.set()
        self.on_snapshot()
        return revision
