"""``pyflannel status`` when the daemon does not answer: the same document, read from
subnet.env, the kernel (what is programmed) and etcd (what should be), each optional."""

from __future__ import annotations

import asyncio
import dataclasses
from ipaddress import IPv4Network, ip_interface

from pyflannel import __version__
from pyflannel.backend import kernel
from pyflannel.backend.kernel import Devices
from pyflannel.backend.offline import EVERYTHING, OfflineBackend, detect
from pyflannel.backend.plan import KernelState, PeerDataError
from pyflannel.errors import FlannelError
from pyflannel.kernel.netlink import Netlink
from pyflannel.ops.snapshot import LeaseView, StoreStatus
from pyflannel.ops.status.document import (
    BackendSection,
    DaemonState,
    PeerRow,
    StatusDoc,
    SubnetEnvState,
)
from pyflannel.ops.status.report import peer_rows
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.env_file import parse_env, previous_network
from pyflannel.subnet.manager import StoreFacts
from pyflannel.subnet.stores import StoreOptions, open_store

ETCD_TIMEOUT = 3.0


def _kernel_view(ipr, network: IPv4Network | None) -> tuple[OfflineBackend | None, KernelState]:
    """This network's backend as its devices show it, and the entries the network owns."""
    found = detect(ipr, network)
    devices = found.devices if found else Devices(networks=(network or EVERYTHING,))
    return found, kernel.read_state(ipr, devices)


async def offline_status(
    store_options: StoreOptions, subnet_file: str, why_no_daemon: str
) -> StatusDoc:
    problems: tuple[str, ...] = ()
    env = {}
    try:
        env = parse_env(open(subnet_file).read())
    except OSError as e:
        problems = (f"missing ({e.strerror})",)
    own = ip_interface(env["FLANNEL_SUBNET"]).network if env.get("FLANNEL_SUBNET") else None
    netlink = Netlink()  # sync IPRoute cannot live in the event loop's thread
    try:
        found, actual = await netlink.call(_kernel_view, previous_network(subnet_file))
    finally:
        netlink.close()
    doc = StatusDoc(
        daemon=DaemonState(running=False, reason=why_no_daemon, version=__version__),
        store=StoreStatus(store_options.kind),
        network=env.get("FLANNEL_NETWORK"),
        subnet_env=SubnetEnvState(subnet_file, problems),
        backend=BackendSection(
            type=found.type if found else None,
            device=found.device if found else None,
            device_present=found is not None,
            mtu=int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU") else None,
            details=found.details if found else {},
        ),
    )
    endpoints = tuple(store_options.endpoints)
    store = open_store(store_options, timeout=ETCD_TIMEOUT)
    try:
        snapshot = await asyncio.wait_for(store.leases(), ETCD_TIMEOUT * 2)
        view = store.view()
        cfg = parse_network_config(await store.network_config())
        mine = next((le for le in snapshot.leases if le.subnet == own), None)
        lease = None
        if mine is not None:
            lease = LeaseView(
                subnet=str(mine.subnet),
                expires_in_s=await store.expires_in(mine),
                reservation=mine.reservation,
            )
        peers = []
        for le in snapshot.leases:
            if le.subnet == own or not le.subnet.subnet_of(cfg.cidr) or found is None:
                continue
            try:
                peers.append(found.peer(le))
            except PeerDataError:
                continue
        return dataclasses.replace(
            doc,
            store=StoreStatus(
                view.kind,
                current=view.address,
                reachable=True,
                facts=dataclasses.replace(view.facts, endpoints=endpoints),
            ),
            lease=lease,
            peers=tuple(peer_rows(peers, actual)),
            ignored=tuple(f"{key}: {why}" for key, why in snapshot.skipped),
        )
    except (FlannelError, TimeoutError) as e:
        # Without the store only the kernel side is known: list what is programmed.
        return dataclasses.replace(
            doc,
            store=StoreStatus(
                store_options.kind,
                reachable=False,
                last_error=str(e) or "timed out",
                facts=StoreFacts(endpoints=endpoints),
            ),
            lease=LeaseView(subnet=str(own) if own else None, expires_in_s=None),
            peers=tuple(
                PeerRow(subnet=str(dst), public_ip="?", encap=route.via, route=True)
                for dst, route in sorted(actual.routes.items())
                if own is None or dst != own
            ),
        )
    finally:
        await store.close()


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
