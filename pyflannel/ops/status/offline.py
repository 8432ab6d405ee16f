"""``pyflannel status`` when the daemon does not answer: the same document, read from
subnet.env, the kernel (what is programmed) and etcd (what should be), each optional."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Network, ip_interface

from pyflannel import __version__
from pyflannel.backend import kernel
from pyflannel.backend.kernel import Devices
from pyflannel.backend.offline import EVERYTHING, OfflineBackend, detect
from pyflannel.backend.plan import KernelState, PeerDataError
from pyflannel.errors import FlannelError
from pyflannel.kernel.netlink import Netlink
from pyflannel.ops.status.report import peer_rows
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.env_file import parse_env, previous_network
from pyflannel.subnet.stores import StoreOptions, open_store

ETCD_TIMEOUT = 3.0


def _kernel_view(ipr, network: IPv4Network | None) -> tuple[OfflineBackend | None, KernelState]:
    """This network's backend as its devices show it, and the entries the network owns."""
    found = detect(ipr, network)
    devices = found.devices if found else Devices(networks=(network or EVERYTHING,))
    return found, kernel.read_state(ipr, devices)


async def offline_status(store_options: StoreOptions, subnet_file: str, why_no_daemon: str) -> dict:
    doc: dict = {"daemon": {"running": False, "reason": why_no_daemon, "version": __version__}}
    env = {}
    try:
        env = parse_env(open(subnet_file).read())
    except OSError as e:
        doc["subnet_env"] = {"path": subnet_file, "problems": [f"missing ({e.strerror})"]}
    else:
        doc["subnet_env"] = {"path": subnet_file, "problems": []}
    own = ip_interface(env["FLANNEL_SUBNET"]).network if env.get("FLANNEL_SUBNET") else None
    netlink = Netlink()  # sync IPRoute cannot live in the event loop's thread
    try:
        found, actual = await netlink.call(_kernel_view, previous_network(subnet_file))
    finally:
        netlink.close()
    doc["backend"] = {
        "type": found.type if found else None,
        "device": found.device if found else None,
        "device_present": found is not None,
        "mtu": int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU") else None,
        **(found.details if found else {}),
    }
    doc["network"] = env.get("FLANNEL_NETWORK")
    kind = doc["store"] = store_options.kind
    store = open_store(store_options, timeout=ETCD_TIMEOUT)
    try:
        snapshot = await asyncio.wait_for(store.leases(), ETCD_TIMEOUT * 2)
        view = store.view()
        doc[kind] = {
            "endpoints": list(store_options.endpoints),
            **view.details,
            "current": view.address,
            "reachable": True,
            "last_error": "",
        }
        cfg = parse_network_config(await store.network_config())
        mine = next((le for le in snapshot.leases if le.subnet == own), None)
        if mine is not None:
            doc["lease"] = {
                "subnet": str(mine.subnet),
                "expires_in_s": await store.expires_in(mine),
                "last_renewal": None,
                "reservation": mine.reservation,
            }
        peers = []
        for lease in snapshot.leases:
            if lease.subnet == own or not lease.subnet.subnet_of(cfg.cidr):
                continue
            if found is None:
                continue
            try:
                peers.append(found.peer(lease))
            except PeerDataError:
                continue
        doc["peers"] = peer_rows(peers, actual)
        doc["ignored"] = [f"{key}: {why}" for key, why in snapshot.skipped]
    except (FlannelError, TimeoutError) as e:
        doc[kind] = {
            "endpoints": list(store_options.endpoints),
            "reachable": False,
            "last_error": str(e) or "timed out",
        }
        doc["lease"] = {"subnet": str(own) if own else None, "expires_in_s": None}
        # Without the store only the kernel side is known: list what is programmed.
        doc["peers"] = [
            {
                "subnet": str(dst),
                "public_ip": "?",
                "encap": route.via,
                "vtep_mac": None,
                "udp_port": None,
                "neighbour": None,
                "fdb": None,
                "route": True,
            }
            for dst, route in sorted(actual.routes.items())
            if own is None or dst != own
        ]
    finally:
        await store.close()
    return doc


async def cluster_leases(store_options: StoreOptions) -> list[dict]:
    """Every lease in the store with its time to live (``pyflannel status --cluster``)."""
    store = open_store(store_options, timeout=ETCD_TIMEOUT)
    try:
        snapshot = await store.leases()
        mesh = await store.path_summaries()
        rows = []
        for le in snapshot.leases:
            ttl = await store.expires_in(le)
            data = le.attrs.backend_data if isinstance(le.attrs.backend_data, dict) else {}
            details = " ".join(f"{k}={v}" for k, v in data.items())
            rows.append(
                {
                    "subnet": str(le.subnet),
                    "public_ip": str(le.attrs.public_ip),
                    "backend": le.attrs.backend_type,
                    "expires_in_s": ttl,
                    "details": details,
                    "key": le.key,
                    "reservation": le.reservation,
                    "paths": (mesh.get(str(le.subnet)) or {}).get("paths"),
                }
            )
        rows += [
            {
                "subnet": key,
                "public_ip": "?",
                "backend": "?",
                "expires_in_s": None,
                "details": f"UNREADABLE: {why}",
                "key": key,
            }
            for key, why in snapshot.skipped
        ]
        return rows
    finally:
        await store.close()
