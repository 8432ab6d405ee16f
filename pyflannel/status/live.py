"""The running daemon's status document (served at /status, read by ``pyflannel status``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pyflannel import __version__
from pyflannel.backend import kernel
from pyflannel.errors import FlannelError
from pyflannel.instance import instances_beside
from pyflannel.status.report import peer_rows
from pyflannel.subnet.env_file import SubnetEnv


def not_ready(daemon) -> list[str]:
    reasons = []
    if daemon.keeper is None or daemon.keeper.lease is None:
        reasons.append("no lease yet")
    if daemon.watch is None or not daemon.watch.synced.is_set():
        reasons.append("peers not listed yet")
    if not daemon.programmed.is_set():
        reasons.append("device not programmed yet")
    if daemon.traffic.enabled and not daemon.traffic.rules:
        reasons.append("iptables rules not in place")
    if not daemon.subnet_file_written:
        reasons.append("subnet.env not written")
    return reasons


def subnet_env_problems(daemon) -> list[str]:
    lease = daemon.keeper.lease if daemon.keeper else None
    if lease is None or daemon.backend is None:
        return []
    want = SubnetEnv(
        daemon.network.network, lease.subnet, daemon.backend.mtu, daemon.options.ip_masq
    ).render()
    try:
        have = Path(daemon.options.subnet_file).read_text()
    except OSError as e:
        return [f"cannot read {daemon.options.subnet_file}: {e.strerror}"]
    return [] if have == want else [f"content differs from the running state ({want.strip()!r})"]


async def daemon_status(daemon) -> dict:
    o, watch, keeper, backend = daemon.options, daemon.watch, daemon.keeper, daemon.backend
    doc: dict = {
        "daemon": {
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "started": daemon.started,
            "ready": daemon.ready.is_set(),
            "not_ready": not_ready(daemon),
        },
        "config_change": daemon.config_change,
        "instance": {
            "etcd_prefix": o.etcd_prefix,
            "subnet_file": o.subnet_file,
            "healthz": daemon.instance.record.healthz,
            "others": [
                r.describe() for r in instances_beside(o.subnet_file) if r.pid != os.getpid()
            ],
        },
        "etcd": {
            "endpoints": o.etcd_endpoints,
            "current": daemon.client.endpoint.url,
            "reachable": bool(watch and watch.connected),
            "revision": watch.revision if watch else None,
            "last_error": watch.last_error if watch else "",
            "watch_restarts": watch.restarts if watch else 0,
            "relists": watch.relists if watch else 0,
        },
        "network": str(daemon.network.network) if daemon.network else None,
    }
    try:
        doc["etcd"]["members"] = await asyncio.wait_for(daemon.client.members(), 3)
    except (FlannelError, TimeoutError) as e:
        doc["etcd"]["members"] = []
        doc["etcd"]["last_error"] = doc["etcd"]["last_error"] or str(e) or "timed out"
    if daemon.ext is not None:
        e = daemon.ext
        doc["interface"] = {
            "name": e.name,
            "index": e.index,
            "mtu": e.mtu,
            "address": str(e.iface_addr),
            "public_ip": str(e.public_ip),
        }
    if keeper is not None and keeper.lease is not None:
        lease = keeper.lease
        doc["lease"] = {
            "subnet": str(lease.subnet),
            "expires_in_s": None if lease.is_reservation else keeper.expires_at - time.monotonic(),
            "reservation": lease.is_reservation,
            "last_renewal": keeper.last_renewal,
            "renewals": keeper.renewals,
            "losses": keeper.losses,
        }
    if backend is not None:
        doc["backend"] = await _backend(daemon, backend)
        actual = await daemon.netlink.call(kernel.read_state, backend.devices())
        doc["peers"] = peer_rows(backend.peers.values(), actual)
        doc["ignored"] = [f"{subnet}: {why}" for subnet, why in backend.rejected.items()]
    doc["subnet_env"] = {"path": o.subnet_file, "problems": subnet_env_problems(daemon)}
    t = daemon.traffic
    doc["iptables"] = {
        "enabled": t.enabled,
        "masquerade": t.masquerade,
        "forward": t.forward,
        "present": await t.present() if t.enabled and t.rules else not t.enabled,
        "last_problem": t.last_problem,
        "restores": t.restores,
    }
    return doc


async def _backend(daemon, backend) -> dict:
    info = {
        "type": backend.name,
        "device": backend.device_name,
        "mtu": backend.mtu,
        "mtu_reason": backend.mtu_reason,
        "fallback": getattr(backend, "fallback_reason", "") or None,
        "device_present": await daemon.netlink.call(_link_exists, backend.device_name),
        "udp": await daemon.datapath_stats(),
        "repairs": backend.repairs,
    }
    if backend.name == "vxlan":
        info.update(
            vni=backend.spec.vni,
            port=backend.spec.effective_port,
            vtep_mac=backend.device.mac if backend.device else None,
        )
    else:
        info.update(port=backend.port)
    return info


def _link_exists(ipr, name: str) -> bool:
    return bool(ipr.link_lookup(ifname=name))
