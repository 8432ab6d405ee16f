"""The lease watch: the leases of the network as a snapshot, then every change, none lost.

Every event of every update is applied (upstream 0.20 used only the first event of each etcd
response). The store's stream resumes where it was after any break (etcd: from the last
revision + 1, on whichever member the client reaches); when the store has forgotten that
history it sends a fresh snapshot and the lease table diffs it against what it knew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pyflannel.backoff import Backoff, Outage
from pyflannel.errors import FlannelError, StoreUnavailable
from pyflannel.subnet.event import LeaseEvent
from pyflannel.subnet.manager import LeaseSnapshot, SubnetManager
from pyflannel.subnet.table import LeaseTable, PeerChanges

log = logging.getLogger(__name__)

# While the store is unreachable the watch tries again every RECONNECT_EVERY seconds, outage
# or not: a try against a member that is down costs one refused connection (~0.2 ms of CPU,
# bench/README "etcd away"), and one against a member that hangs lasts the client's timeout,
# so this is no busy loop. What it buys: a lease written the moment etcd is back reaches the
# kernel within ~RECONNECT_EVERY however long etcd was away, where a backoff grown during a
# long outage would cost seconds after it. A store that answers with a refusal (auth,
# permissions) is retried with a backoff instead: it will not change its mind every 0.1 s.
RECONNECT_EVERY = 0.1


class PeerWatch:
    def __init__(
        self,
        store: SubnetManager,
        table: LeaseTable,
        on_changes: Callable[[PeerChanges], Awaitable[None]],
        on_own_event: Callable[[LeaseEvent], None] = lambda event: None,
        on_snapshot: Callable[[], None] = lambda: None,
        first_listing: LeaseSnapshot | None = None,
    ):
        self.store = store
        self.table = table
        self.on_changes = on_changes
        self.on_own_event = on_own_event
        self.on_snapshot = on_snapshot
        self.stream = store.watch(first_listing)
        self.restarts = 0  # watch streams re-opened after a break
        self.relists = 0
        self.synced = asyncio.Event()  # set once the first snapshot is applied
        self.connected = False  # the watch stream is established right now
        self.last_error = ""

    async def run(self) -> None:
        try:
            await self._follow()
        finally:
            await self.stream.close()

    async def _follow(self) -> None:
        outage = Outage(log, f"{self.store.name} unreachable for the lease watch")
        refusals = Backoff(first=0.5, cap=5.0)
        while True:
            try:
                update = await self.stream.next()
            except FlannelError as e:
                # Unreachable, or refused (auth, permissions, a server error): either way the
                # data plane stays as it is and we keep trying, saying why, never exiting.
                self.connected, self.last_error = False, str(e)
                outage.failed(e, f"resuming the watch after {self.stream.position}")
                self.restarts += 1
                unreachable = isinstance(e, StoreUnavailable)
                await asyncio.sleep(RECONNECT_EVERY if unreachable else refusals.next())
                continue
            self.connected = True
            if outage.ok() is not None:
                refusals.reset()
            if isinstance(update, LeaseSnapshot):
                await self._snapshot(update)
                continue
            own = [e for e in update.events if e.subnet is not None and e.subnet == self.table.own]
            await self.on_changes(self.table.apply(update.events))
            for event in own:
                self.on_own_event(event)

    async def _snapshot(self, snapshot: LeaseSnapshot) -> None:
        if snapshot.reason:
            log.warning("lease watch: %s; re-listing all leases", snapshot.reason)
        changes = self.table.reset(snapshot.leases)
        changes.ignored.extend(snapshot.skipped)
        await self.on_changes(changes)
        self.relists += 1
        self.synced.set()
        self.on_snapshot()
