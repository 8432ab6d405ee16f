"""One WireGuard device as pyflannel keeps it, whoever uses it (the wireguard backend's
``flannel-wg``, the site link's ``flannel-site``): its data plane chosen (the kernel's module if a
link can be made, else wireguard-go), kept running, and its configuration made the wanted one
on every pass (uapi.py's diff, which keeps an endpoint the device learned from the peer)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyflannel.backend import kernel
from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.wireguard.kernel_wg import KernelWireguard, create_link
from pyflannel.backend.wireguard.keys import InvalidKey, load_or_create, public_key
from pyflannel.backend.wireguard.uapi import Change, DeviceState, WantedDevice, diff
from pyflannel.backend.wireguard.userspace import WireguardGo
from pyflannel.errors import BackendError
from pyflannel.kernel.netlink import Netlink

log = logging.getLogger(__name__)


async def key_pair(path: Path, what: str) -> tuple[bytes, str]:
    """The private key in ``path`` (created once, mode 0600) and its public key (base64, as
    advertised); BackendError naming the file if it cannot be had."""
    try:
        private, created = await asyncio.to_thread(load_or_create, path)
    except (InvalidKey, OSError) as e:
        raise BackendError(f"{what} key file {path}: {e}") from e
    public = base64.b64encode(public_key(private)).decode()
    log.info("%s %s key %s (public key %s)", "created" if created else "using", what, path, public)
    return private, public


@dataclass
class WgDevice:
    """One WireGuard device: its name, listen port, data plane and interface index."""

    name: str
    port: int
    plane: WireguardGo | KernelWireguard | None = None
    index: int | None = None
    # the endpoint written last per peer (public key, hex): what its lease published then
    published: dict[str, str] = field(default_factory=dict)
    seen: DeviceState = field(default_factory=DeviceState)  # as it reported, last reconcile

    async def start(self, netlink: Netlink, datapath: str) -> None:
        """Choose the data plane (``datapath``: auto | kernel | userspace) and run it."""
        self.plane = await self._choose(netlink, datapath)
        await self.ensure(netlink)

    async def _choose(self, netlink: Netlink, datapath: str) -> WireguardGo | KernelWireguard:
        name = self.name
        if datapath in ("auto", "kernel"):
            try:
                await netlink.call(create_link, name)
                log.info("WireGuard: using the kernel's module for %s", name)
                return KernelWireguard(name)
            except Exception as e:
                reason = kernel.describe_error(e)
                if datapath == "kernel":
                    raise BackendError(
                        f"cannot create WireGuard device {name} in the kernel: {reason} "
                        "(--wireguard-datapath=kernel; auto would use wireguard-go)"
                    ) from e
                why = f"the kernel cannot make a wireguard link ({reason})"
        else:
            why = "forced by --wireguard-datapath=userspace"
        plane = WireguardGo(name)  # BackendError naming the package if it is missing
        log.warning("WireGuard: %s; using wireguard-go for %s", why, name)
        return plane

    async def ensure(self, netlink: Netlink) -> list[str]:
        """The data plane running and the device there (restarted/recreated); what it did."""
        assert self.plane is not None, "start() first"
        done = await asyncio.to_thread(self.plane.ensure)
        index = await netlink.call(kernel.link_index, self.name)
        if index is None:
            raise BackendError(f"{self.name} is missing although WireGuard runs")
        self.index = index
        return done

    async def sync(self, wanted: WantedDevice) -> list[str]:
        """Make the device's key, port and peers ``wanted``'s; what was changed. Raises
        UapiError/OSError when the device does not answer."""
        assert self.plane is not None
        have = await self.read()
        change = diff(wanted, have, time.time(), self.published)
        if change:
            await asyncio.to_thread(self.plane.set, change)
        self.published = {k: p.endpoint for k, p in wanted.peers.items()}
        return [f"{self.name}: {words}" for words in change.describe()]

    async def read(self) -> DeviceState:
        """The device as it is now (kept as ``seen``)."""
        assert self.plane is not None
        self.seen = await asyncio.to_thread(self.plane.get)
        return self.seen

    async def drop(self, keys: list[str]) -> None:
        """Remove these peers (hex keys) now; the next ``sync`` writes them anew."""
        assert self.plane is not None
        await asyncio.to_thread(self.plane.set, Change(remove=keys))

    def endpoint_of(self, public_key: str) -> PeerEndpoint | None:
        """Where the peer of ``public_key`` (base64) is sent, as the device said last."""
        key = base64.b64decode(public_key).hex()
        state, published = self.seen.peers.get(key), self.published.get(key)
        if state is None or not published:
            return None
        return PeerEndpoint(state.endpoint, published, state.last_handshake)

    def problem(self) -> str | None:
        return self.plane.problem() if self.plane is not None else None

    async def stop(self) -> None:
        if self.plane is not None:
            await asyncio.to_thread(self.plane.stop)
