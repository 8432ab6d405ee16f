"""The wireguard backend: ``flannel-wg`` with one WireGuard peer per lease and one route for
the whole network through it (upstream's layout), MTU = interface - 80.

Two data planes behind one backend, chosen by ``--wireguard-datapath`` (``auto``: the kernel's
module if a link can be made, else userspace): the kernel's WireGuard, or Debian's
``wireguard-go`` started and supervised here. Both are configured with the same wanted device
(uapi.py), diffed against what the device reports on every reconcile, so a peer added,
changed, removed, or someone's ``wg set`` is followed or undone.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from pyflannel.backend import kernel
from pyflannel.backend.base import Backend
from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import (
    WIREGUARD_BACKEND,
    KernelState,
    Peer,
    PeerDataError,
    Route,
    Via,
)
from pyflannel.backend.registry import BackendContext
from pyflannel.backend.wireguard.config import WireguardConfig, parse_wireguard_config
from pyflannel.backend.wireguard.kernel_wg import KernelWireguard, create_link
from pyflannel.backend.wireguard.keys import (
    InvalidKey,
    key_file_path,
    load_or_create,
    parse_key,
    public_key,
)
from pyflannel.backend.wireguard.peers import lease_data, wanted_device, wireguard_peer
from pyflannel.backend.wireguard.uapi import UapiError, diff
from pyflannel.backend.wireguard.userspace import WireguardGo
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)

DEVICE = "flannel-wg"
DATAPATHS = ("auto", "kernel", "userspace")


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "wireguard"."""
    backend = WireguardBackend(ctx.netlink, ctx.network, ctx.ext, ctx.wireguard_datapath)
    return backend, await backend.prepare()


class WireguardBackend(Backend):
    name = WIREGUARD_BACKEND
    device_name = DEVICE

    def __init__(
        self, netlink: Netlink, network: NetworkConfig, ext: ExtIface, datapath: str = "auto"
    ):
        super().__init__(netlink, network, ext)
        self.config: WireguardConfig = parse_wireguard_config(network.backend)
        self.datapath = datapath
        self.mtu = overlay_mtu(WIREGUARD_BACKEND, self.config.mtu or ext.mtu)
        self.key_path = key_file_path()
        self._private = b""
        self.public_key = ""  # base64, as advertised
        self._psk = parse_key(self.config.psk) if self.config.psk else b""
        self.plane: WireguardGo | KernelWireguard | None = None
        self.index: int | None = None
        self.choice = ""  # why this data plane, for the log and status

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 80 (WireGuard overhead)"

    def devices(self) -> Devices:
        return Devices(tun=self.index, networks=self.owned_networks)

    # -- set-up ----------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        try:
            self._private, created = await asyncio.to_thread(load_or_create, self.key_path)
        except (InvalidKey, OSError) as e:
            raise BackendError(f"WireGuard key file {self.key_path}: {e}") from e
        self.public_key = base64.b64encode(public_key(self._private)).decode()
        log.info(
            "%s WireGuard key %s (public key %s)",
            "created the" if created else "using the",
            self.key_path,
            self.public_key,
        )
        self.plane = await self._choose_plane()
        await self._ensure_plane()
        return self.lease_attrs()

    async def _choose_plane(self) -> WireguardGo | KernelWireguard:
        if self.datapath in ("auto", "kernel"):
            try:
                await self.netlink.call(create_link, DEVICE)
                self.choice = "kernel WireGuard"
                log.info("WireGuard: using the kernel's module for %s", DEVICE)
                return KernelWireguard(DEVICE)
            except Exception as e:
                reason = kernel.describe_error(e)
                if self.datapath == "kernel":
                    raise BackendError(
                        f"cannot create WireGuard device {DEVICE} in the kernel: {reason} "
                        "(--wireguard-datapath=kernel; auto would use wireguard-go)"
                    ) from e
                self.choice = f"userspace: the kernel cannot make a wireguard link ({reason})"
        else:
            self.choice = "userspace: forced by --wireguard-datapath=userspace"
        plane = WireguardGo(DEVICE)  # BackendError naming the package if it is missing
        log.warning("WireGuard: %s; using wireguard-go for %s", self.choice, DEVICE)
        return plane

    async def _ensure_plane(self) -> list[str]:
        assert self.plane is not None, "prepare() first"
        done = await asyncio.to_thread(self.plane.ensure)
        link = await self.netlink.call(kernel.find_link, DEVICE)
        if link is None:
            raise BackendError(f"{DEVICE} is missing although WireGuard runs")
        self.index = link.index
        return done

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            backend_type=WIREGUARD_BACKEND,
            backend_data=lease_data(public_key(self._private)),
        )

    async def move_underlay(self, ext: ExtIface) -> LeaseAttrs:
        """WireGuard listens on every address: only the advertised endpoint changes."""
        async with self.kernel.lock:
            self.ext = ext
            self.mtu = overlay_mtu(WIREGUARD_BACKEND, self.config.mtu or ext.mtu)
            self.kernel.repair_wanted.set()
        return self.lease_attrs()

    async def _assign(self, lease: Lease) -> None:
        await self._configure_device()
        await self._sync_peers()
        if not self.kernel.desired.state.routes:  # the whole network through flannel-wg
            await self.kernel.add_entries(
                KernelState(routes={self.network.cidr: Route(None, Via.TUN)})
            )

    async def _configure_device(self) -> list[str]:
        assert self.index is not None
        return await self.netlink.call(
            kernel.configure_device,
            self.index,
            DEVICE,
            self.held_lease.subnet.network_address,
            self.network.cidr,
            self.mtu,
        )

    async def ensure_devices(self) -> list[str]:
        repaired = await self._ensure_plane()
        repaired += [f"device {c}" for c in await self._configure_device()]
        return repaired + await self._sync_peers()

    # -- peers -----------------------------------------------------------------------------

    async def peer(self, lease: Lease) -> Peer:
        peer = wireguard_peer(lease, self.public_key, self.config.listen_port)
        for subnet, other in self.peers.items():
            if subnet != lease.subnet and other.public_key == peer.public_key:
                raise PeerDataError(
                    f"BackendData.PublicKey {peer.public_key} is also the key of {subnet} "
                    f"(at {other.public_ip}): one key, one node; not programmed"
                )
        return peer

    def entries(self, peer: Peer) -> KernelState:
        return KernelState()  # a WireGuard peer, not a kernel entry

    async def update_peers(self, changes: PeerChanges) -> None:
        await super().update_peers(changes)
        async with self.kernel.lock:
            await self._sync_peers()

    async def _sync_peers(self) -> list[str]:
        """Make the device's key, port and peers the wanted ones; what was changed."""
        assert self.plane is not None
        wanted = wanted_device(
            self._private,
            self.config.listen_port,
            list(self.peers.values()),
            self.config.keepalive,
            self._psk,
        )
        try:
            have = await asyncio.to_thread(self.plane.get)
            change = diff(wanted, have)
            if change:
                await asyncio.to_thread(self.plane.set, change)
        except (UapiError, OSError) as e:
            log.warning("WireGuard device %s: %s; retrying at the next pass", DEVICE, e)
            self.kernel.repair_wanted.set()
            return []
        return change.describe()

    def datapath_problem(self) -> str | None:
        return self.plane.problem() if self.plane is not None else None

    def _snapshot_details(self) -> dict[str, Any]:
        return {
            "port": self.config.listen_port,
            "public_key": self.public_key,
            "datapath": self.plane.describe() if self.plane is not None else None,
            "fallback": None,
        }

    async def close(self) -> None:
        if self.plane is not None:
            await asyncio.to_thread(self.plane.stop)
