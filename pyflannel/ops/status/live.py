"""The running daemon's status document (served at /status, read by ``pyflannel status``),
built from the snapshot the daemon publishes and the live questions of ``StatusIO``."""

from __future__ import annotations

import asyncio
import dataclasses

from pyflannel.backend.dataplane import BackendSnapshot
from pyflannel.errors import FlannelError
from pyflannel.ops.snapshot import DaemonSnapshot, StatusIO
from pyflannel.ops.status.document import (
    BackendSection,
    DatapathStats,
    InterfaceView,
    PeerRow,
    StatusDoc,
    SubnetEnvState,
)
from pyflannel.ops.status.report import peer_rows
from pyflannel.traffic import br_netfilter


async def daemon_status(snap: DaemonSnapshot, io: StatusIO) -> StatusDoc:
    store = snap.store
    try:
        store = dataclasses.replace(
            store, members=tuple(await asyncio.wait_for(io.store_members(), 3))
        )
    except (FlannelError, TimeoutError) as e:
        store = dataclasses.replace(store, last_error=store.last_error or str(e) or "timed out")
    ext, b, t = snap.interface, snap.backend, snap.traffic
    backend: BackendSection | None = None
    peers: tuple[PeerRow, ...] = ()
    ignored: tuple[str, ...] = ()
    if b is not None:
        backend = BackendSection(
            type=b.type,
            device=b.device,
            mtu=b.mtu,
            mtu_reason=b.mtu_reason,
            device_present=await io.device_present(),
            udp=DatapathStats.parse(await io.datapath_stats()),
            repairs=b.repairs,
            reconcile_passes=b.passes,
            probe_host=b.probe_host,
            details=_with_site(b),
        )
        actual = await io.kernel_state()
        if actual is not None:
            peers = tuple(_with_paths(row, snap) for row in peer_rows(b.peers, actual, b.path_mtu))
        ignored = tuple(f"{subnet}: {why}" for subnet, why in b.rejected)
    return StatusDoc(
        daemon=snap.daemon,
        config_change=snap.config_change,
        mesh=snap.counters,
        instance=snap.instance,
        store=store,
        network=snap.network,
        network6=snap.network6,
        interface=None
        if ext is None
        else InterfaceView(
            name=ext.name,
            index=ext.index,
            mtu=ext.mtu,
            address=str(ext.iface_addr),
            public_ip=str(ext.public_ip),
            address6=str(ext.iface_addr6) if ext.iface_addr6 is not None else "",
            public_ipv6=str(ext.public_ipv6) if ext.iface_addr6 is not None else "",
        ),
        lease=snap.lease,
        backend=backend,
        peers=peers,
        ignored=ignored,
        subnet_env=SubnetEnvState(snap.instance.subnet_file, snap.subnet_env_problems),
        bridge_nf=br_netfilter.read(),
        iptables=dataclasses.replace(
            t, present=await io.rules_present() if t.enabled and t.rules_set else not t.enabled
        ),
    )


def _with_site(b: BackendSnapshot) -> dict:
    """The backend's details, with this node's site, its outside address and whom it relays
    for (--site)."""
    return {**b.details, **b.site}


def _with_paths(row: PeerRow, snap: DaemonSnapshot) -> PeerRow:
    """A peer's row with what the prober and the healer say of its path, and where its
    session is sent (WireGuard)."""
    endpoints = snap.backend.endpoints if snap.backend is not None else {}
    v6 = row.ipv6
    if v6 is not None and v6.programmed:
        v6 = dataclasses.replace(
            v6, path=snap.mesh.get(v6.subnet), endpoint=endpoints.get(v6.subnet)
        )
    return dataclasses.replace(
        row,
        path=snap.mesh.get(row.subnet),
        heal=snap.paths.get(row.subnet),
        endpoint=endpoints.get(row.subnet),
        ipv6=v6,
        placement=snap.backend.placements.get(row.subnet) if snap.backend is not None else None,
    )
