"""Backends by type name, as upstream's ``pkg/backend`` registers them.

Each entry names a module and its ``start(ctx)``: an async function that creates the
backend's devices and returns the backend with the lease attributes to advertise. Modules are
imported only when chosen. Adding a backend is a folder under ``backend/`` and one line here.

``PYFLANNEL_BACKENDS`` (``type=module,...``) adds entries without editing the tree: a backend
being developed out of tree, or one a test defines (tests/e2e/test_custom_backend.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import LeaseAttrs

if TYPE_CHECKING:
    from pyflannel.backend.base import Backend

BACKENDS: dict[str, str] = {
    "vxlan": "pyflannel.backend.vxlan.backend",
    "udp": "pyflannel.backend.udp.backend",
    "host-gw": "pyflannel.backend.hostgw.backend",
    "wireguard": "pyflannel.backend.wireguard.backend",
    "alloc": "pyflannel.backend.alloc.backend",
    "extension": "pyflannel.backend.extension.backend",
}


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets to start: the kernel, the network, the underlay, and this node's
    own settings (the daemon's flags by name, e.g. ``udp_workers``: each backend reads the
    ones it has)."""

    netlink: Netlink
    network: NetworkConfig
    ext: ExtIface
    settings: Mapping[str, Any] = field(default_factory=dict)

    def setting(self, name: str, default: Any) -> Any:
        value = self.settings.get(name)
        return default if value is None else value


Start = Callable[[BackendContext], Awaitable[tuple["Backend", LeaseAttrs]]]


EXTRA_ENV = "PYFLANNEL_BACKENDS"


def registered(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Every backend: the built-in ones, and those ``PYFLANNEL_BACKENDS`` adds."""
    extra = (item.partition("=") for item in environ.get(EXTRA_ENV, "").split(",") if item)
    return {**BACKENDS, **{name.strip().lower(): module.strip() for name, _, module in extra}}


def supported() -> list[str]:
    return list(registered())


async def start_backend(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """The backend the network config names, started; BackendError for an unknown type."""
    module = registered().get(ctx.network.backend_type.lower())
    if module is None:
        raise BackendError(
            f"backend type {ctx.network.backend_type!r} is not supported by this pyflannel "
            f"(supported: {', '.join(supported())})"
        )
    chosen = importlib.import_module(module)
    if ctx.network.enable_ipv6 and not carries_ipv6(chosen):
        raise BackendError(
            f"backend type {ctx.network.backend_type!r} carries IPv4 only (as upstream's), "
            f"but the network config sets EnableIPv6: use {' or '.join(dual_stack())}, or set "
            "EnableIPv6 to false"
        )
    start: Start = chosen.start
    return await start(ctx)


def carries_ipv6(module: Any) -> bool:
    """A backend module says whether it carries IPv6 too (``DUAL_STACK = True``)."""
    return bool(getattr(module, "DUAL_STACK", False))


def dual_stack() -> list[str]:
    """The backends that carry IPv6 too (as upstream: vxlan, host-gw, wireguard)."""
    return [n for n, m in registered().items() if carries_ipv6(importlib.import_module(m))]
