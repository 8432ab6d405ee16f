"""etcd endpoint URLs: ``http://host:port`` or ``https://host:port`` (pure, no gRPC import)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Endpoint:
    url: str
    target: str  # host:port for gRPC
    tls: bool


def parse_endpoint(url: str) -> Endpoint:
    url = url.strip()
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r} is not http://host:port or https://host:port")
    port = parts.port or 2379
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(url, f"{host}:{port}", parts.scheme == "https")
