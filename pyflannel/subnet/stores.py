"""Which store a node's leases live in, and how to reach it: the options, and the one place
that opens a subnet manager by kind (``etcd`` today; upstream also has ``kube``). Modules are
imported only when chosen, so nothing above this layer imports a store's client."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyflannel.subnet.manager import SubnetManager

STORES: dict[str, str] = {"etcd": "pyflannel.etcd.store"}


@dataclass(frozen=True)
class StoreOptions:
    """How to reach the store: its endpoints, the network's prefix in it, credentials."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    prefix: str = "/coreos.com/network"
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    kind: str = "etcd"


@dataclass(frozen=True)
class Endpoint:
    url: str
    target: str  # host:port
    tls: bool


def parse_endpoint(url: str) -> Endpoint:
    """``http://host:port`` or ``https://host:port`` (a bare ``host:port`` means http)."""
    url = url.strip()
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r} is not http://host:port or https://host:port")
    port = parts.port or 2379
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(url, f"{host}:{port}", parts.scheme == "https")


def open_store(options: StoreOptions, timeout: float = 5.0) -> SubnetManager:
    """The subnet manager ``options`` describe (no I/O yet: it connects on first use)."""
    module = importlib.import_module(STORES[options.kind])
    return module.open_store(options, timeout)
