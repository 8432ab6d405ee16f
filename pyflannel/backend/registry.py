"""Backends by type name, as upstream's ``pkg/backend`` registers them.

Each entry names a module and its ``start(ctx)``: an async function that creates the
backend's devices and returns the backend with the lease attributes to advertise. Modules are
imported only when chosen. Adding a backend is a folder under ``backend/`` and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import LeaseAttrs

if TYPE_CHECKING:
    from pyflannel.backend.base import Backend
    from pyflannel.backend.udp.path import UdpTuning

BACKENDS: dict[str, str] = {
    "vxlan": "pyflannel.backend.vxlan.backend",
    "udp": "pyflannel.backend.udp.backend",
    "host-gw": "pyflannel.backend.hostgw.backend",
    "wireguard": "pyflannel.backend.wireguard.backend",
}
DUAL_STACK = ("vxlan", "host-gw", "wireguard")  # the backends that carry IPv6 too (as upstream)


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets to start: the kernel, the network, the underlay, and the local
    choices of --backend-fallback, --udp-fallback-port and the UDP data-path tuning."""

    netlink: Netlink
    network: NetworkConfig
    ext: ExtIface
    udp_tuning: UdpTuning
    fallback: str = "auto"  # auto | udp | off
    udp_fallback_port: int = 8285
    wireguard_datapath: str = "auto"  # auto | kernel | userspace


Start = Callable[[BackendContext], Awaitable[tuple["Backend", LeaseAttrs]]]


def supported() -> list[str]:
    return list(BACKENDS)


async def start_backend(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """The backend the network config names, started; BackendError for an unknown type."""
    module = BACKENDS.get(ctx.network.backend_type.lower())
    if module is None:
        raise BackendError(
            f"backend type {ctx.network.backend_type!r} is not supported by this pyflannel "
            f"(supported: {', '.join(supported())})"
        )
    if ctx.network.enable_ipv6 and ctx.network.backend_type.lower() not in DUAL_STACK:
        raise BackendError(
            f"backend type {ctx.network.backend_type!r} carries IPv4 only (as upstream's), "
            f"but the network config sets EnableIPv6: use {' or '.join(DUAL_STACK)}, or set "
            "EnableIPv6 to false"
        )
    start: Start = importlib.import_module(module).start
    return await start(ctx)
