"""The running daemon's status document (served at /status, read by ``pyflannel status``),
built from the snapshot the daemon publishes and the live questions of ``StatusIO``."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from pyflannel.errors import FlannelError
from pyflannel.ops.snapshot import DaemonSnapshot, StatusIO
from pyflannel.ops.status.report import peer_rows
from pyflannel.traffic import br_netfilter


async def daemon_status(snap: DaemonSnapshot, io: StatusIO) -> dict:
    doc: dict = {
        "daemon": {
            "running": True,
            "pid": snap.pid,
            "version": snap.version,
            "started": snap.started,
            "ready": snap.ready,
            "not_ready": list(snap.not_ready),
        },
        "config_change": snap.config_change,
        "mesh": {
            "probes_sent": snap.probes_sent,
            "summaries_written": snap.mesh_writes,
            "path_moves": snap.path_moves,
            "path_rounds": snap.path_rounds,
        },
        "instance": {**asdict(snap.instance), "others": list(snap.instance.others)},
        "store": snap.store.kind,
        snap.store.kind: {
            **snap.store.details,
            "current": snap.store.current,
            "reachable": snap.store.reachable,
            "last_error": snap.store.last_error,
            "watch_restarts": snap.store.watch_restarts,
            "relists": snap.store.relists,
        },
        "network": snap.network,
        "network6": snap.network6,
    }
    store = doc[snap.store.kind]
    try:
        store["members"] = await asyncio.wait_for(io.store_members(), 3)
    except (FlannelError, TimeoutError) as e:
        store["members"] = []
        store["last_error"] = store["last_error"] or str(e) or "timed out"
    ext = snap.interface
    if ext is not None:
        doc["interface"] = {
            "name": ext.name,
            "index": ext.index,
            "mtu": ext.mtu,
            "address": str(ext.iface_addr),
            "public_ip": str(ext.public_ip),
        }
        if ext.iface_addr6 is not None:
            doc["interface"].update(address6=str(ext.iface_addr6), public_ipv6=str(ext.public_ipv6))
    if snap.lease is not None:
        doc["lease"] = asdict(snap.lease)
    b = snap.backend
    if b is not None:
        doc["backend"] = {
            "type": b.type,
            "device": b.device,
            "mtu": b.mtu,
            "mtu_reason": b.mtu_reason,
            "device_present": await io.device_present(),
            "udp": await io.datapath_stats(),
            "repairs": b.repairs,
            "reconcile_passes": b.passes,
            "probe_host": b.probe_host,
            **b.details,
        }
        actual = await io.kernel_state()
        if actual is not None:
            doc["peers"] = peer_rows(b.peers, actual)
            for row in doc["peers"]:
                row["path"] = snap.mesh.get(row["subnet"])
                if row["subnet"] in snap.paths:
                    row["heal"] = snap.paths[row["subnet"]]
                v6 = row.get("ipv6") or {}
                if "subnet" in v6:
                    v6["path"] = snap.mesh.get(v6["subnet"])
        doc["ignored"] = [f"{subnet}: {why}" for subnet, why in b.rejected]
    doc["subnet_env"] = {
        "path": snap.instance.subnet_file,
        "problems": list(snap.subnet_env_problems),
    }
    bridge_nf = br_netfilter.read()
    doc["bridge_nf"] = {"iptables": bridge_nf.iptables, "ip6tables": bridge_nf.ip6tables}
    t = snap.traffic
    doc["iptables"] = {
        "mode": t.mode,
        "enabled": t.enabled,
        "masquerade": t.masquerade,
        "forward": t.forward,
        "present": await io.rules_present() if t.enabled and t.rules_set else not t.enabled,
        "last_problem": t.last_problem,
        "restores": t.restores,
    }
    return doc
