"""What the daemon publishes for /status and /metrics: its typed snapshot, and the answers to
the live questions (``StatusIO``). The only place that reads the daemon's parts for them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pyflannel import __version__
from pyflannel.app.options import Options
from pyflannel.app.running import Running
from pyflannel.backend import kernel
from pyflannel.backend.plan import KernelState
from pyflannel.kernel.iproute import IPRoute
from pyflannel.kernel.netlink import Netlink
from pyflannel.ops.instance import Instance, instances_beside
from pyflannel.subnet.env_file import SubnetEnv
from pyflannel.subnet.manager import SubnetManager
from pyflannel.traffic.families import NetworkRules

if TYPE_CHECKING:  # the prober (and statistics) are imported only where it runs, the
    # snapshot's types when the first snapshot is taken (not on the way to subnet.env)
    from pyflannel.ops.mesh.healer import PathHealer
    from pyflannel.ops.mesh.mtu_fixer import PathMtuFixer
    from pyflannel.ops.mesh.prober import MeshProber
    from pyflannel.ops.snapshot import DaemonSnapshot, ProbeView


class Daemon(Protocol):
    """What this module reads of the running daemon (app/daemon.py)."""

    options: Options
    started: float
    ready: asyncio.Event
    subnet_file_written: bool
    running: Running | None
    traffic: NetworkRules
    store: SubnetManager
    instance: Instance
    netlink: Netlink
    prober: MeshProber | None
    healer: PathHealer | None
    mtu_fixer: PathMtuFixer | None

    @property
    def programmed(self) -> bool: ...

    @property
    def mesh_writes(self) -> int: ...

    async def datapath_stats(self) -> dict | None: ...


def summary(daemon: Daemon) -> str:
    """The one line systemd shows as the unit's status."""
    r = daemon.running
    assert r is not None, "a running daemon"
    return (
        f"subnet {r.lease.subnet}, {len(r.plane.peers)} peers, "
        f"{r.plane.name} on {r.plane.device_name}"
        + ("" if r.watch.connected else f", {daemon.store.name} unreachable")
    )


def not_ready(daemon: Daemon) -> list[str]:
    r = daemon.running
    reasons = []
    if r is None or r.keeper.lease is None:
        reasons.append("no lease yet")
    if r is None or not r.watch.synced.is_set():
        reasons.append("peers not listed yet")
    if not daemon.programmed:
        reasons.append("device not programmed yet")
    if daemon.traffic.enabled and not daemon.traffic.rules:
        reasons.append("iptables rules not in place")
    if not daemon.subnet_file_written:
        reasons.append("subnet.env not written")
    return reasons


def subnet_env_problems(daemon: Daemon) -> list[str]:
    r, path = daemon.running, daemon.options.subnet_file
    if r is None or r.keeper.lease is None:
        return []
    want = SubnetEnv.for_lease(
        r.network, r.keeper.lease, r.plane.mtu, daemon.options.ip_masq
    ).render()
    try:
        have = Path(path).read_text()
    except OSError as e:
        return [f"cannot read {path}: {e.strerror}"]
    return [] if have == want else [f"content differs from the running state ({want.strip()!r})"]


def daemon_snapshot(daemon: Daemon) -> DaemonSnapshot:
    from pyflannel.ops.snapshot import (
        DaemonSnapshot,
        DaemonState,
        InstanceView,
        LeaseView,
        MeshCounters,
        StoreAccess,
        StoreStatus,
        TrafficView,
    )

    o, r, t = daemon.options, daemon.running, daemon.traffic
    watch = r.watch if r else None
    keeper = r.keeper if r else None
    view = daemon.store.view()
    lease = None
    if keeper is not None and keeper.lease is not None:
        held = keeper.lease
        lease = LeaseView(
            subnet=str(held.subnet),
            expires_in_s=None if held.reservation else keeper.expires_at - time.monotonic(),
            reservation=held.reservation,
            last_renewal=keeper.last_renewal,
            renewals=keeper.renewals,
            losses=keeper.losses,
            ipv6_subnet=str(held.ipv6_subnet) if held.ipv6_subnet else None,
            last_renewal_took_s=keeper.last_renewal_took,
        )
    return DaemonSnapshot(
        daemon=DaemonState(
            running=True,
            pid=os.getpid(),
            version=__version__,
            started=daemon.started,
            ready=daemon.ready.is_set(),
            not_ready=tuple(not_ready(daemon)),
        ),
        config_change=r.config_watch.change if r else "",
        instance=InstanceView(
            etcd_prefix=o.etcd_prefix,
            subnet_file=o.subnet_file,
            healthz=daemon.instance.record.healthz,
            others=tuple(
                rec.describe() for rec in instances_beside(o.subnet_file) if rec.pid != os.getpid()
            ),
            access=StoreAccess(
                endpoints=tuple(o.etcd_endpoints),
                cafile=o.etcd_cafile,
                certfile=o.etcd_certfile,
                keyfile=o.etcd_keyfile,
                username=o.etcd_username,
                password_in=o.password_in,
            ),
        ),
        store=StoreStatus(
            kind=view.kind,
            current=view.address,
            reachable=bool(watch and watch.connected),
            last_error=watch.last_error if watch else "",
            watch_restarts=watch.restarts if watch else 0,
            relists=watch.relists if watch else 0,
            facts=view.facts,
        ),
        network=str(r.network.cidr) if r else None,
        network6=str(r.network.cidr6) if r and r.network.cidr6 else None,
        interface=r.ext if r else None,
        lease=lease,
        backend=r.plane.snapshot() if r else None,
        subnet_env_problems=tuple(subnet_env_problems(daemon)),
        mesh=_mesh(daemon),
        counters=MeshCounters(
            probes_sent=daemon.prober.sent if daemon.prober else 0,
            summaries_written=daemon.mesh_writes,
            path_moves={str(k): v for k, v in daemon.healer.moves.items()} if daemon.healer else {},
            path_rounds=daemon.healer.rounds if daemon.healer else 0,
        ),
        paths=daemon.healer.view() if daemon.healer else {},
        traffic=TrafficView(
            mode=t.mode,
            enabled=t.enabled,
            masquerade=t.masquerade,
            forward=t.forward,
            rules_set=bool(t.rules),
            last_problem=t.last_problem,
            restores=t.restores,
            site_strangers=t.strangers,
        ),
    )


class StatusAnswers:
    """The daemon's answers to /status's live questions (ops.snapshot.StatusIO)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    async def store_members(self) -> list[dict]:
        return await self.daemon.store.members()

    async def kernel_state(self) -> KernelState | None:
        r = self.daemon.running
        if r is None:
            return None
        return await self.daemon.netlink.call(kernel.read_state, r.plane.devices())

    async def device_present(self) -> bool:
        r = self.daemon.running
        if r is None:
            return False
        if not r.plane.device_name:
            return True  # a backend without a device of its own (routes only)
        return await self.daemon.netlink.call(_link_exists, r.plane.device_name)

    async def datapath_stats(self) -> dict | None:
        return await self.daemon.datapath_stats()

    async def rules_present(self) -> bool:
        return await self.daemon.traffic.present()


def _link_exists(ipr: IPRoute, name: str) -> bool:
    return ipr.get_link(name) is not None


def _mesh(daemon: Daemon) -> dict[str, ProbeView]:
    """The prober's view of every path, with the paths whose MTU was fixed."""
    if daemon.prober is None:
        return {}
    views = daemon.prober.view()
    return daemon.mtu_fixer.annotate(views) if daemon.mtu_fixer is not None else views
