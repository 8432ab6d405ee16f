"""What a backend can tell from the kernel alone, when its daemon is down (``pyflannel
status`` then): which of its devices are here, what a lease means to it. A backend module
that can say offers ``offline(ipr, network)``; the registered ones are asked in order."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from pyflannel.backend.kernel import Devices
from pyflannel.backend.plan import Peer
from pyflannel.backend.registry import registered
from pyflannel.subnet.lease import Lease

EVERYTHING = IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class OfflineBackend:
    type: str
    device: str
    devices: Devices  # its devices here, and the network its routes lie in
    peer: Callable[[Lease], Peer]  # what a lease means to it (pure: PeerDataError if unusable)
    details: dict[str, Any] = field(default_factory=dict)  # for the status document


def detect(ipr, network: IPv4Network | None) -> OfflineBackend | None:
    """The first registered backend that finds its devices here (the ones holding an address
    inside ``network``, if it is known: another network's are not this one's)."""
    for module in registered().values():
        offline = getattr(importlib.import_module(module), "offline", None)
        found = offline(ipr, network or EVERYTHING) if offline is not None else None
        if found is not None:
            return found
    return None
