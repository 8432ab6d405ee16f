"""What every backend shares: peers in, kernel state out, through one reconciler.

Two paths, one plan function (plan.py):
- an event (peers added/changed/removed) diffs only those peers' entries against the model
  of the kernel kept here (``actual``), so thousands of peers cost nothing per event;
- ``reconcile()`` checks the devices, re-reads everything we own from the kernel and diffs it
  all: at start-up (removing entries of peers that vanished while we were down), periodically,
  and after failures (re-adding what someone deleted, recreating a deleted device).
A backend supplies its devices, the attributes it advertises, and what a peer needs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from pyflannel.backend import kernel
from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import DesiredState, KernelState, Op, Peer, PeerDataError, diff, record
from pyflannel.config import NetworkConfig
from pyflannel.iface import ExtIface
from pyflannel.netlink import Netlink
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Backend:
    name = ""
    mtu = 0
    device_name = ""

    def __init__(self, netlink: Netlink, network: NetworkConfig, ext: ExtIface):
        self.netlink = netlink
        self.network = network
        self.ext = ext
        self.lease: Lease | None = None
        self.peers: dict[IPv4Network, Peer] = {}
        self.desired = DesiredState()
        self.actual = KernelState()  # our model of the kernel, refreshed by reconcile()
        self.repairs = 0
        self.repair_wanted = asyncio.Event()  # an event could not be applied fully
        # Event updates, reconciles and re-addressing all touch the kernel: one at a time.
        self._kernel_lock = asyncio.Lock()
        # Until the first full reconcile, peer events only shape the desired state: that
        # reconcile reads the kernel once and applies the whole difference (a restart with
        # everything in place: one dump, nothing to apply).
        self.programmed = False
        self._own_deletions: dict[tuple[str, str], int] = {}  # (table, key) we deleted ourselves
        self.rejected: dict[IPv4Network, str] = {}  # leases this node cannot use, and why
        # Route destinations this network owns: its CIDR, and the CIDR the subnet file named
        # before a config change (its leftovers are ours to remove, nobody else's).
        self.owned_networks: tuple[IPv4Network, ...] = (network.network,)

    def also_own(self, previous: IPv4Network | None) -> None:
        """Routes inside ``previous`` (this daemon's network before a config change, read
        from its own subnet file) are ours too: removed, as no peer wants them now."""
        if previous is not None and not any(previous.overlaps(n) for n in self.owned_networks):
            self.owned_networks += (previous,)

    # -- what a backend supplies -----------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        """Create or adopt the devices; return the attributes to advertise in our lease."""
        raise NotImplementedError

    def lease_attrs(self) -> LeaseAttrs:
        """The attributes to advertise, from the current devices."""
        raise NotImplementedError

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """Follow a changed underlay interface/address; the attributes to advertise now."""
        raise NotImplementedError

    async def _assign(self, lease: Lease) -> None:
        """Configure the devices for our (new) subnet."""
        raise NotImplementedError

    async def _peer(self, lease: Lease) -> Peer:
        """The peer a lease describes; PeerDataError if this node cannot use it."""
        raise NotImplementedError

    def _entries(self, peer: Peer) -> KernelState:
        """The kernel entries a peer needs on this node."""
        raise NotImplementedError

    def devices(self) -> Devices:
        raise NotImplementedError

    async def _ensure_devices(self) -> list[str]:
        """Recreate/reconfigure devices that changed behind our back; what was repaired."""
        raise NotImplementedError

    def _peers_changed(self) -> None:
        """Hook after the peer set changed (e.g. swap the UDP forwarding table)."""

    def datapath_stats(self) -> dict | None:
        """Packet counters of a userspace data path, if this backend runs one."""
        return None

    def datapath_problem(self) -> str | None:
        """Why a userspace data path has stopped, if it has (for liveness checks)."""
        return None

    def close(self) -> None:
        """Stop packet threads; devices and kernel entries stay for the next start."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device_name, "mtu": self.mtu}

    # -- shared mechanics ------------------------------------------------------------------

    async def assign(self, lease: Lease) -> None:
        async with self._kernel_lock:
            self.lease = lease
            await self._assign(lease)

    async def update_peers(self, changes: PeerChanges) -> None:
        async with self._kernel_lock:
            scope = KernelState()
            for lease in changes.removed:
                self.rejected.pop(lease.subnet, None)
                self._forget(lease.subnet, scope)
            for lease in changes.added:
                self._forget(lease.subnet, scope)
                try:
                    peer = await self._peer(lease)
                except PeerDataError as e:
                    self._reject(lease, str(e))
                    continue
                self.rejected.pop(lease.subnet, None)
                self.peers[lease.subnet] = peer
                entries = self._entries(peer)
                self.desired.add(entries)
                scope.add(entries)
            self._peers_changed()
            if self.programmed and scope.size():
                _, failed = await self._apply(diff(self.desired.state, self.actual, scope))
                if failed:
                    self.repair_wanted.set()

    def _forget(self, subnet: IPv4Network, scope: KernelState) -> None:
        old = self.peers.pop(subnet, None)
        if old is not None:
            entries = self._entries(old)
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
        deletions = [(op.table, str(op.key)) for op in ops if op.action == "delete"]
        for mark in deletions:  # before sending: the notification may beat our own wake-up
            self._own_deletions[mark] = self._own_deletions.get(mark, 0) + 1
        failed = await self.netlink.call(kernel.apply_all, self.devices(), ops)
        for op, _ in failed:
            if op.action == "delete":
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
        count = self._own_deletions.get((table, key), 0)
        if not count:
            return False
        if count == 1:
            del self._own_deletions[(table, key)]
        else:
            self._own_deletions[(table, key)] = count - 1
        return True

    async def reconcile(self) -> ReconcileReport:
        """Make the kernel match the desired state, whatever happened to it meanwhile."""
        async with self._kernel_lock:
            report = ReconcileReport(repaired=await self._ensure_devices())
            self.actual = await self.netlink.call(kernel.read_state, self.devices())
            done, report.failed = await self._apply(diff(self.desired.state, self.actual))
            if self.programmed:
                report.repaired += [f"{op.action} {op.table} {op.key}" for op in done]
                self.repairs += len(report.repaired)
            self.programmed = self.programmed or not report.failed
            return report
