"""The reconciler every backend uses: peers in, kernel state out.

Two paths, one plan function (plan.py):
- an event (peers added/changed/removed) diffs only those peers' entries against the model
  of the kernel kept here (``actual``), so thousands of peers cost nothing per event;
- ``reconcile()`` checks the devices, re-reads everything the network owns from the kernel
  and diffs it all: at start-up (removing entries of peers that vanished while we were down),
  periodically, and after failures (re-adding what someone deleted, recreating a deleted
  device).

A backend only describes: its devices, what a lease means as a peer, and which kernel
entries a peer needs (``DesiredStateSource``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Protocol

from pyflannel.backend import kernel
from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import (
    Action,
    DesiredState,
    IPNetwork,
    KernelState,
    Op,
    Peer,
    PeerDataError,
    diff,
    record,
    with_path_mtu,
)
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class DesiredStateSource(Protocol):
    """What a backend tells the reconciler."""

    def all_devices(self) -> Devices:
        """The devices entries point at, and the CIDRs the network owns."""
        ...

    async def ensure_devices(self) -> list[str]:
        """Recreate/reconfigure devices that changed behind our back; what was repaired."""
        ...

    async def placed_peer(self, lease: Lease) -> Peer:
        """The peer a lease describes; PeerDataError if this node cannot use it."""
        ...

    def entries(self, peer: Peer) -> KernelState:
        """The kernel entries a peer needs on this node."""
        ...

    def peers_changed(self) -> None:
        """After the peer set changed (e.g. swap the UDP forwarding table)."""
        ...


class Reconciler:
    def __init__(self, netlink: Netlink, source: DesiredStateSource):
        self.netlink = netlink
        self.source = source
        self.peers: dict[IPv4Network, Peer] = {}
        self.rejected: dict[IPv4Network, str] = {}  # leases this node cannot use, and why
        self.desired = DesiredState()
        self.actual = KernelState()  # our model of the kernel, refreshed by reconcile()
        self.repairs = 0
        self.passes = 0  # full reconciles tried (an observable tick for tests and status)
        self.repair_wanted = asyncio.Event()  # an event could not be applied fully
        # Event updates, reconciles and re-addressing all touch the kernel: one at a time.
        self.lock = asyncio.Lock()
        # Until the first full reconcile, peer events only shape the desired state: that
        # reconcile reads the kernel once and applies the whole difference (a restart with
        # everything in place: one dump, nothing to apply).
        self.programmed = False
        self._own_deletions: dict[tuple[str, str], int] = {}  # deletions we made ourselves
        self._own = KernelState()  # entries for this node's own subnets (set_own)
        self.path_mtu: dict[IPNetwork, int] = {}  # subnet -> its path's MTU, where fixed

    async def update_peers(self, changes: PeerChanges) -> None:
        async with self.lock:
            scope = KernelState()
            for lease in changes.removed:
                self.rejected.pop(lease.subnet, None)
                self._forget(lease.subnet, scope)
            for lease in changes.added:
                self._forget(lease.subnet, scope)
                try:
                    peer = await self.source.placed_peer(lease)
                except PeerDataError as e:
                    self._reject(lease, str(e))
                    continue
                self.rejected.pop(lease.subnet, None)
                self._remember(peer, scope)
            self.source.peers_changed()
            if self.programmed and scope.size():
                await self._apply_scoped(scope)

    async def replace_peer(self, peer: Peer) -> None:
        """A peer this node now reaches another way (the path healer): its entries swapped
        for ``peer``'s, only what differs applied."""
        async with self.lock:
            scope = KernelState()
            self._forget(peer.subnet, scope)
            self._remember(peer, scope)
            self.source.peers_changed()
            if self.programmed:
                await self._apply_scoped(scope)

    async def set_path_mtu(self, subnet: IPNetwork, mtu: int | None) -> None:
        """The route to ``subnet`` (a peer's, of either family) carries ``mtu`` (None: the
        device's again); only that route is replaced."""
        async with self.lock:
            scope = KernelState()
            peer = self._peer_of(subnet)
            if peer is not None:
                self._forget(peer.subnet, scope)
            if mtu is None:
                self.path_mtu.pop(subnet, None)
            else:
                self.path_mtu[subnet] = mtu
            if peer is not None:
                self._remember(peer, scope)
                if self.programmed:
                    await self._apply_scoped(scope)

    def _peer_of(self, subnet: IPNetwork) -> Peer | None:
        if subnet.version == 4:
            return self.peers.get(subnet)
        return next((p for p in self.peers.values() if p.v6 and p.v6.subnet == subnet), None)

    async def add_entries(self, entries: KernelState) -> None:
        """Entries the network needs whatever its peers (e.g. the UDP backend's route for the
        whole network); call with ``lock`` held."""
        self.desired.add(entries)
        await self._apply_scoped(entries)

    async def _apply_scoped(self, scope: KernelState) -> None:
        _, failed = await self._apply(diff(self.desired.state, self.actual, scope))
        if failed:
            self.repair_wanted.set()

    async def set_own(self, entries: KernelState) -> None:
        """The entries this node wants for its own subnets (they follow its lease: the ones
        set before are dropped); call with ``lock`` held."""
        scope = KernelState()
        scope.add(self._own)
        scope.add(entries)
        self.desired.discard(self._own)
        self.desired.add(entries)
        self._own = entries
        if self.programmed:
            await self._apply_scoped(scope)

    def _remember(self, peer: Peer, scope: KernelState) -> None:
        """A peer and its entries wanted (added to ``scope``, to be applied)."""
        self.peers[peer.subnet] = peer
        entries = with_path_mtu(self.source.entries(peer), self.path_mtu)
        self.desired.add(entries)
        scope.add(entries)

    def _forget(self, subnet: IPv4Network, scope: KernelState) -> None:
        old = self.peers.pop(subnet, None)
        if old is not None:
            entries = with_path_mtu(self.source.entries(old), self.path_mtu)
            self.desired.discard(entries)
            scope.add(entries)

    def _reject(self, lease: Lease, reason: str) -> None:
        if self.rejected.get(lease.subnet) != reason:  # once per lease and reason
            log.warning(
                "ignoring lease %s from %s: %s", lease.subnet, lease.attrs.public_ip, reason
            )
            self.rejected[lease.subnet] = reason

    async def _apply(self, ops: list[Op]) -> tuple[list[Op], list[str]]:
        """Apply operations in order and record each success in the model.
        Returns the operations done and a description of each failure."""
        if not ops:
            return [], []
        deletions = [(op.table, str(op.key)) for op in ops if op.action == Action.DELETE]
        for mark in deletions:  # before sending: the notification may beat our own wake-up
            self._own_deletions[mark] = self._own_deletions.get(mark, 0) + 1
        failed = await self.netlink.call(kernel.apply_all, self.source.all_devices(), ops)
        for op, _ in failed:
            if op.action == Action.DELETE:
                self.explains(op.table, str(op.key))
        bad = {id(op) for op, _ in failed}
        done = [op for op in ops if id(op) not in bad]
        for op in done:
            record(self.actual, op)
        for op, error in failed:
            log.warning(
                "kernel refused %s %s %s: %s (will retry)", op.action, op.table, op.key, error
            )
        return done, [f"{op.action} {op.table} {op.key}: {error}" for op, error in failed]

    def explains(self, table: str, key: str) -> bool:
        """Is this deletion one we made ourselves (each is explained once)?"""
        mark = (table, key)  # Table is a StrEnum: its members and their strings are one key
        count = self._own_deletions.get(mark, 0)
        if not count:
            return False
        if count == 1:
            del self._own_deletions[mark]
        else:
            self._own_deletions[mark] = count - 1
        return True

    async def reconcile(self) -> ReconcileReport:
        """Make the kernel match the desired state, whatever happened to it meanwhile."""
        async with self.lock:
            self.passes += 1  # tried, whatever comes of it
            report = ReconcileReport(repaired=await self.source.ensure_devices())
            self.actual = await self.netlink.call(kernel.read_state, self.source.all_devices())
            done, report.failed = await self._apply(diff(self.desired.state, self.actual))
            if self.programmed:
                report.repaired += [f"{op.action} {op.table} {op.key}" for op in done]
                self.repairs += len(report.repaired)
            self.programmed = self.programmed or not report.failed
            return report
