"""The VXLAN backend: owns ``flannel.<VNI>`` and reconciles peer entries onto it.

Two paths, one plan function:
- an event (a peer added/changed/removed) diffs only that peer's entries against the model
  of the kernel kept here (``actual``), so thousands of peers cost nothing per event;
- ``reconcile()`` re-reads the device and everything we own from the kernel and diffs it all:
  used at start-up (removing entries of peers that vanished while we were down), periodically,
  and after failures (re-adding what someone deleted, recreating a deleted device).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.vxlan import kernel
from pyflannel.backend.vxlan.device import (
    VxlanConfig,
    VxlanLink,
    VxlanSpec,
    device_name,
    incompatibilities,
    parse_vxlan_config,
    random_vtep_mac,
)
from pyflannel.backend.vxlan.plan import (
    VXLAN_BACKEND,
    DesiredState,
    KernelState,
    Op,
    VtepPeer,
    VxlanDataError,
    diff,
    peer_entries,
    record,
    vtep_peer,
)
from pyflannel.config import NetworkConfig
from pyflannel.errors import BackendError
from pyflannel.iface import ExtIface
from pyflannel.netlink import Netlink
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class VxlanBackend:
    name = VXLAN_BACKEND

    def __init__(self, netlink: Netlink, network: NetworkConfig, ext: ExtIface):
        self.netlink = netlink
        self.network = network
        self.ext = ext
        self.config: VxlanConfig = parse_vxlan_config(network.backend)
        self.mtu = overlay_mtu(VXLAN_BACKEND, self.config.mtu or ext.mtu)
        self.spec = VxlanSpec(
            name=device_name(self.config.vni),
            vni=self.config.vni,
            local=ext.public_ip,
            link_index=ext.index,
            port=self.config.port,
            learning=self.config.learning,
            gbp=self.config.gbp,
            mtu=self.mtu,
        )
        self.device: VxlanLink | None = None
        self.lease: Lease | None = None
        self.peers: dict[IPv4Network, VtepPeer] = {}
        self.desired = DesiredState()
        self.actual = KernelState()  # our model of the kernel, refreshed by reconcile()
        self.repairs = 0
        self.repair_wanted = asyncio.Event()  # an event could not be applied fully
        # Event updates and full reconciles both read and write ``actual``: one at a time.
        self._kernel_lock = asyncio.Lock()
        self._rejected: dict[IPv4Network, str] = {}

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 50 (VXLAN overhead)"

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        """Create or adopt the device; return the attributes to advertise in our lease."""
        self.device = await self._ensure_device(mac=None)
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            backend_type=VXLAN_BACKEND,
            backend_data={"VNI": self.spec.vni, "VtepMAC": self.device.mac},
        )

    async def _ensure_device(self, mac: str | None) -> VxlanLink:
        link = await self.netlink.call(kernel.find_link, self.spec.name)
        if link is not None:
            reasons = incompatibilities(link, self.spec)
            if not reasons:
                log.info("keeping existing device %s (VTEP MAC %s)", link.name, link.mac)
                return link
            log.warning("recreating %s: existing device has %s", link.name, ", ".join(reasons))
            await self.netlink.call(kernel.delete_link, link.index)
        try:
            link = await self.netlink.call(kernel.create_vxlan, self.spec, mac or random_vtep_mac())
        except Exception as e:
            raise BackendError(
                f"cannot create VXLAN device {self.spec.name} (VNI {self.spec.vni}, "
                f"port {self.spec.effective_port}, via {self.ext.name}): {e}"
            ) from e
        log.info(
            "created %s: VNI %d, local %s, port %d, MTU %d, VTEP MAC %s",
            link.name,
            self.spec.vni,
            self.spec.local,
            self.spec.effective_port,
            self.mtu,
            link.mac,
        )
        return link

    async def assign(self, lease: Lease) -> None:
        """Give the device our subnet's network address and bring it up."""
        async with self._kernel_lock:
            self.lease = lease
            await self._configure_device()

    async def _configure_device(self) -> list[str]:
        return await self.netlink.call(
            kernel.configure_device,
            self.device.index,
            self.device.name,
            self.lease.subnet.network_address,
            self.network.network,
            self.mtu,
        )

    # -- peers -----------------------------------------------------------------------------

    async def update_peers(self, changes: PeerChanges) -> None:
        async with self._kernel_lock:
            await self._update_peers(changes)

    async def _update_peers(self, changes: PeerChanges) -> None:
        scope = KernelState()
        for lease in changes.removed:
            old = self.peers.pop(lease.subnet, None)
            self._rejected.pop(lease.subnet, None)
            if old is not None:
                entries = peer_entries(old)
                self.desired.discard(entries)
                scope.add(entries)
        for lease in changes.added:
            old = self.peers.pop(lease.subnet, None)
            if old is not None:
                entries = peer_entries(old)
                self.desired.discard(entries)
                scope.add(entries)
            peer = await self._peer(lease)
            if peer is None:
                continue
            self.peers[lease.subnet] = peer
            entries = peer_entries(peer)
            self.desired.add(entries)
            scope.add(entries)
        if scope.size():
            _, failed = await self._apply(diff(self.desired.state, self.actual, scope))
            if failed:
                self.repair_wanted.set()

    async def _peer(self, lease: Lease) -> VtepPeer | None:
        try:
            peer = vtep_peer(lease)
        except VxlanDataError as e:
            if self._rejected.get(lease.subnet) != str(e):
                log.warning("ignoring lease %s from %s: %s", lease.subnet, lease.attrs.public_ip, e)
                self._rejected[lease.subnet] = str(e)
            return None
        self._rejected.pop(lease.subnet, None)
        if self.config.direct_routing:
            direct = await self.netlink.call(
                kernel.directly_reachable, peer.public_ip, self.ext.index
            )
            peer = VtepPeer(peer.subnet, peer.public_ip, peer.vtep_mac, direct)
        return peer

    async def _apply(self, ops: list[Op]) -> tuple[list[Op], list[str]]:
        """Apply operations in order and record each success in the model.
        Returns the operations done and a description of each failure."""
        if not ops:
            return [], []
        failed = await self.netlink.call(_apply_all, self.device.index, ops)
        bad = {id(op) for op, _ in failed}
        done = [op for op in ops if id(op) not in bad]
        for op in done:
            record(self.actual, op)
        for op, error in failed:
            log.warning(
                "kernel refused %s %s %s: %s (will retry)", op.action, op.table, op.key, error
            )
        return done, [f"{op.action} {op.table} {op.key}: {error}" for op, error in failed]

    # -- reconciliation --------------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Make the kernel match the desired state, whatever happened to it meanwhile."""
        async with self._kernel_lock:
            return await self._reconcile()

    async def _reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        link = await self.netlink.call(kernel.find_link, self.spec.name)
        if link is None or incompatibilities(link, self.spec) or link.mac != self.device.mac:
            what = "was deleted" if link is None else "was changed"
            self.device = await self._ensure_device(mac=self.device.mac)
            report.repaired.append(f"device {self.spec.name} {what}; recreated")
        else:
            self.device = link
        report.repaired += [f"device {c}" for c in await self._configure_device()]
        self.actual = await self.netlink.call(kernel.read_state, self.device.index)
        done, report.failed = await self._apply(diff(self.desired.state, self.actual))
        report.repaired += [f"{op.action} {op.table} {op.key}" for op in done]
        self.repairs += len(report.repaired)
        return report


def _apply_all(ipr, index: int, ops) -> list[tuple[object, str]]:
    """Runs on the netlink thread: all operations in one go, failures collected."""
    failed = []
    for op in ops:
        try:
            kernel.apply_op(ipr, index, op)
        except Exception as e:
            failed.append((op, str(e)))
    return failed
