"""A lease: a subnet, the attributes its owner advertises, and how long it lives.

The value stored in etcd is upstream's ``LeaseAttrs`` JSON byte for byte (Go ``json.Marshal``:
compact, fixed key order, ``PublicIPv6`` always present, empty backend fields omitted). Decoding
is tolerant like Go's: keys match case-insensitively and unknown keys are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.subnet.key import subnet_key


class LeaseDecodeError(ValueError):
    """A lease value in etcd is not valid LeaseAttrs JSON."""


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""
    backend_data: Any = None
    backend_v6_data: Any = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "PublicIP": str(self.public_ip),
            "PublicIPv6": None if self.public_ipv6 is None else str(self.public_ipv6),
        }
        if self.backend_type:
            doc["BackendType"] = self.backend_type
        if self.backend_data is not None:
            doc["BackendData"] = self.backend_data
        if self.backend_v6_data is not None:
            doc["BackendV6Data"] = self.backend_v6_data
        return go_json(doc)

    @classmethod
    def from_json(cls, raw: bytes | str) -> LeaseAttrs:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise LeaseDecodeError(f"not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise LeaseDecodeError("not a JSON object")
        doc = {k.lower(): v for k, v in doc.items()}
        backend_type = doc.get("backendtype") or ""
        if not isinstance(backend_type, str):
            raise LeaseDecodeError("BackendType is not a string")
        return cls(
            public_ip=_ip(doc.get("publicip"), IPv4Address, "PublicIP") or IPv4Address(0),
            public_ipv6=_ip(doc.get("publicipv6"), IPv6Address, "PublicIPv6"),
            backend_type=backend_type,
            backend_data=doc.get("backenddata"),
            backend_v6_data=doc.get("backendv6data"),
        )


@dataclass(frozen=True)
class Lease:
    """What the store holds for a subnet. A store's own bookkeeping (etcd: the key's mod
    revision, the etcd lease it is attached to) stays in the store (subnet/manager.py)."""

    subnet: IPv4Network
    attrs: LeaseAttrs
    ipv6_subnet: IPv6Network | None = None
    # Seconds left when read or written, 0 if unknown or a reservation; not part of what a
    # lease *is*: two reads of one lease at different moments are equal.
    ttl: int = field(default=0, compare=False)
    reservation: bool = False  # an operator bound the subnet to this node: it never expires
    grantor: int | None = None  # the fingerprint of the node that granted it, if it says

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)

    def with_attrs(self, attrs: LeaseAttrs) -> Lease:
        return replace(self, attrs=attrs)


def go_json(doc: Any) -> bytes:
    """Encode like Go's json.Marshal: compact, UTF-8, and HTML-safe escapes."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _GO_ESCAPES:
        text = text.replace(char, escape)
    return text.encode()


# Outside strings JSON has none of these characters, so a global replace is exact.
_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _ip(value: Any, kind: type, name: str):
    if value is None:
        return None
    if not isinstance(value, str):
        raise LeaseDecodeError(f"{name} is not a string")
    try:
        return kind(value)
    except ValueError:
        raise LeaseDecodeError(f"{name} {value!r} is not a valid address") from None
