"""The VXLAN device we want, and whether an existing one can be kept (device.go:85-127).

Pure. Keeping a compatible device across restarts keeps its MAC, so peers' neighbour and FDB
entries stay valid and traffic does not stop while the daemon restarts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pyflannel.errors import ConfigError
from pyflannel.kernel.links import Link, Vxlan

KERNEL_DEFAULT_PORT = 8472  # Linux's VXLAN port when none is given (IANA's is 4789)
MAX_VNI = (1 << 24) - 1


@dataclass(frozen=True)
class VxlanConfig:
    """The ``Backend`` object of a vxlan network config (keys case-insensitive)."""

    vni: int = 1
    port: int = 0  # 0: the kernel default
    mtu: int = 0  # 0: the external interface's MTU
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False


def parse_vxlan_config(backend: dict[str, Any]) -> VxlanConfig:
    doc = {k.lower(): v for k, v in backend.items()}

    def integer(name: str, default: int, high: int) -> int:
        value = doc.get(name.lower())
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ConfigError(f"Backend.{name} must be an integer from 0 to {high}, not {value!r}")
        return value

    def flag(name: str) -> bool:
        value = doc.get(name.lower())
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ConfigError(f"Backend.{name} must be true or false, not {value!r}")
        return value

    return VxlanConfig(
        vni=integer("VNI", 1, MAX_VNI),
        port=integer("Port", 0, 65535),
        mtu=integer("MTU", 0, 65535),
        gbp=flag("GBP"),
        learning=flag("Learning"),
        direct_routing=flag("DirectRouting"),
    )


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    local: IPv4Address | IPv6Address | None  # an IPv6 local: the flannel-v6 device; None: any
    link_index: int
    port: int
    learning: bool
    gbp: bool
    mtu: int

    @property
    def effective_port(self) -> int:
        return self.port or KERNEL_DEFAULT_PORT

    def settings(self) -> Vxlan:
        """The device's VXLAN settings as netlink carries them."""
        return Vxlan(self.vni, self.local, self.link_index, self.port, self.learning, self.gbp)


def device_name(vni: int, ipv6: bool = False) -> str:
    """``flannel.<VNI>``, and ``flannel-v6.<VNI>`` for the IPv6 device (vxlan.go:205,233)."""
    return f"flannel-v6.{vni}" if ipv6 else f"flannel.{vni}"


def incompatibilities(link: Link, spec: VxlanSpec) -> list[str]:
    """Why ``link`` cannot serve as ``spec``'s device; empty if it can be kept as is
    (upstream's ``vxlanLinksIncompat``: what the kernel leaves unset is not compared)."""
    have = link.vxlan
    if link.kind != "vxlan" or have is None:
        return [f"it is a {link.kind or 'non-vxlan'} link"]
    reasons = []
    if have.vni != spec.vni:
        reasons.append(f"VNI {have.vni} instead of {spec.vni}")
    if have.underlay and have.underlay != spec.link_index:
        reasons.append(f"underlay link index {have.underlay} instead of {spec.link_index}")
    if have.local is not None and have.local != spec.local:
        reasons.append(f"local address {have.local} instead of {spec.local}")
    if have.port and have.port != spec.effective_port:
        reasons.append(f"port {have.port} instead of {spec.effective_port}")
    if have.learning != spec.learning:
        reasons.append(f"learning {'on' if have.learning else 'off'}")
    if have.gbp != spec.gbp:
        reasons.append(f"GBP {'on' if have.gbp else 'off'}")
    return reasons


def random_vtep_mac(rng: random.Random | None = None) -> str:
    """A random locally administered unicast MAC, like upstream's pkg/mac."""
    octets = bytearray((rng or random).getrandbits(8) for _ in range(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)
