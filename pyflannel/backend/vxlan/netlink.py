"""The VXLAN device's own netlink I/O: reading a link as the VXLAN backend needs it, and
creating one. Runs on the netlink thread (pyflannel.kernel.netlink), like backend/kernel.py."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv6Address

from pyflannel.backend.vxlan.device import VxlanLink, VxlanSpec


def find_link(ipr, name: str) -> VxlanLink | None:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    link = ipr.get_links(found[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else ""
    base = dict(
        index=link["index"],
        name=name,
        kind=kind or "",
        mac=link.get_attr("IFLA_ADDRESS") or "",
        mtu=link.get_attr("IFLA_MTU") or 0,
    )
    if kind != "vxlan":
        return VxlanLink(**base)
    data = info.get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL")
    local6 = data.get_attr("IFLA_VXLAN_LOCAL6")
    return VxlanLink(
        **base,
        vni=data.get_attr("IFLA_VXLAN_ID"),
        local=IPv4Address(local) if local else IPv6Address(local6) if local6 else None,
        link_index=data.get_attr("IFLA_VXLAN_LINK") or 0,
        port=data.get_attr("IFLA_VXLAN_PORT") or 0,
        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        gbp=data.get_attr("IFLA_VXLAN_GBP") is not None,
    )


def create_vxlan(ipr, spec: VxlanSpec, mac: str) -> VxlanLink:
    attrs = dict(
        ifname=spec.name,
        kind="vxlan",
        address=mac,
        mtu=spec.mtu,
        vxlan_id=spec.vni,
        vxlan_link=spec.link_index,
        vxlan_learning=int(spec.learning),
    )
    attrs["vxlan_local6" if spec.local.version == 6 else "vxlan_local"] = str(spec.local)
    if spec.port:
        attrs["vxlan_port"] = spec.port
    if spec.gbp:
        attrs["vxlan_gbp"] = True
    ipr.link("add", **attrs)
    link = find_link(ipr, spec.name)
    if link is None:
        raise OSError(errno.ENODEV, f"{spec.name} vanished right after it was created")
    return link
