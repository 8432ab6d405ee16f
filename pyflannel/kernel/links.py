"""Devices as typed values: a ``Link`` as the kernel reports it, and a ``Vxlan`` device's own
settings (what flannel's ``netlink.Vxlan`` carries). ``IPRoute.get_link`` reads a Link,
``IPRoute.add_link`` creates one; the VXLAN backend compares what it finds with what it wants
and recreates an incompatible device (upstream's ``ensureLink``). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pyflannel.kernel.codec import IFF_UP
from pyflannel.kernel.message import Message


@dataclass(frozen=True)
class Vxlan:
    """A VXLAN device's settings (IFLA_INFO_DATA)."""

    vni: int
    local: IPv4Address | IPv6Address | None  # an IPv6 local: IFLA_VXLAN_LOCAL6
    underlay: int = 0  # IFLA_VXLAN_LINK: the device it sends by (0: any)
    port: int = 0  # 0: the kernel's default (8472)
    learning: bool = False
    gbp: bool = False

    def data(self) -> dict[str, Any]:
        """Its IFLA_INFO_DATA attributes, by name (message.VXLAN)."""
        v6 = self.local is not None and self.local.version == 6
        return {
            "IFLA_VXLAN_ID": self.vni,
            "IFLA_VXLAN_LINK": self.underlay or None,
            "IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL": self.local,
            "IFLA_VXLAN_LEARNING": int(self.learning),
            "IFLA_VXLAN_PORT": self.port or None,
            "IFLA_VXLAN_GBP": True if self.gbp else None,
        }

    @classmethod
    def of(cls, data: Message) -> Vxlan:
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        return cls(
            vni=data.get_attr("IFLA_VXLAN_ID") or 0,
            local=local,
            underlay=data.get_attr("IFLA_VXLAN_LINK") or 0,
            port=data.get_attr("IFLA_VXLAN_PORT") or 0,
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            gbp=data.get_attr("IFLA_VXLAN_GBP") is not None,
        )


@dataclass(frozen=True)
class Link:
    """A device as the kernel reports it."""

    index: int
    name: str
    kind: str  # "" for a device without one (lo, a physical NIC)
    mac: str
    mtu: int
    up: bool
    vxlan: Vxlan | None = None  # a VXLAN device's settings

    @classmethod
    def of(cls, msg: Message) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info else "") or ""
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        return cls(
            index=msg["index"],
            name=msg.get_attr("IFLA_IFNAME") or "",
            kind=kind,
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            mtu=msg.get_attr("IFLA_MTU") or 0,
            up=bool(msg["flags"] & IFF_UP),
            vxlan=Vxlan.of(data) if kind == "vxlan" and data is not None else None,
        )
