"""Peer changes from the lease watch onto the data plane.

The first listing is applied at once (the first full reconcile must see it); later changes
queue up and are applied together, so a burst of events becomes a few batches of kernel
requests, not one each. A peer's latest change wins (added then removed is removed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network

from pyflannel.backend.dataplane import DataPlane
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)

PEER_LOG_LIMIT = 10  # log peers one by one up to this many per batch, else a summary


async def _nothing() -> None:
    pass


class PeerProgrammer:
    def __init__(
        self,
        plane: DataPlane,
        synced: asyncio.Event,
        after: Callable[[], Awaitable[None]] = _nothing,
        source: str = "store",
    ):
        """``synced``: set once the watch's first listing is applied; ``after``: what else
        follows the peer set (the traffic rules' peer filter); ``source``: the store's name,
        for the log."""
        self.plane = plane
        self.source = source
        self.synced = synced
        self.after = after
        self._pending: dict[IPv4Network, tuple[bool, Lease]] = {}  # subnet -> (added?, lease)
        self._wake = asyncio.Event()

    async def changed(self, changes: PeerChanges) -> None:
        """The lease watch's ``on_changes``."""
        for key, reason in changes.ignored:
            log.warning("ignoring %s key %s: %s", self.source, key, reason)
        if not changes:
            return
        if not self.synced.is_set():
            await self.program(changes)
            return
        for lease in changes.removed:
            self._pending[lease.subnet] = (False, lease)
        for lease in changes.added:
            self._pending[lease.subnet] = (True, lease)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            await self.program(
                PeerChanges(
                    added=[lease for added, lease in pending.values() if added],
                    removed=[lease for added, lease in pending.values() if not added],
                )
            )

    async def program(self, changes: PeerChanges) -> None:
        if not changes:
            return
        detail = len(changes.added) + len(changes.removed) <= PEER_LOG_LIMIT
        for lease in changes.added:
            (log.info if detail else log.debug)(
                "peer %s at %s (%s) added",
                lease.subnet,
                lease.attrs.public_ip,
                lease.attrs.backend_type or "udp",
            )
        for lease in changes.removed:
            (log.info if detail else log.debug)(
                "peer %s at %s removed", lease.subnet, lease.attrs.public_ip
            )
        if not detail:
            log.info(
                "%d peers added or changed, %d removed", len(changes.added), len(changes.removed)
            )
        await self.plane.update_peers(changes)
        await self.after()
