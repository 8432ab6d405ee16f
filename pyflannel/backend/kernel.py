"""Netlink I/O for the backends. Every function takes a pyroute2 ``IPRoute`` first and runs
on the netlink thread (see pyflannel.netlink); the decisions live in plan.py and device.py.

Ownership: pyflannel touches only its own devices, the neighbour/FDB entries on its VXLAN
device, and routes in the main table that carry its route protocol number ``RTPROT_PYFLANNEL``.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from pyflannel.backend.plan import KernelState, Op, Route
from pyflannel.backend.vxlan.device import VxlanLink, VxlanSpec

log = logging.getLogger(__name__)

RTPROT_PYFLANNEL = 152  # our routes: `ip route show proto 152`
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
NUD_PERMANENT = ndmsg.states["permanent"]
NTF_SELF = ndmsg.NTF_SELF
AF_INET = 2

# Errors that mean "already as wanted" for the operation that got them.
_ABSENT = {errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class Devices:
    """Interface indexes of the devices routes may point at (None: not on this node)."""

    vxlan: int | None = None
    tun: int | None = None


def describe_error(e: Exception) -> str:
    """A netlink error as a sentence: the kernel's message and the errno name."""
    if isinstance(e, NetlinkError):
        name = errno.errorcode.get(e.code, str(e.code))
        message = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code)
        return f"{message} ({name})"
    return str(e)


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
    return VxlanLink(
        **base,
        vni=data.get_attr("IFLA_VXLAN_ID"),
        local=IPv4Address(local) if local else None,
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
        vxlan_local=str(spec.local),
        vxlan_link=spec.link_index,
        vxlan_learning=int(spec.learning),
    )
    if spec.port:
        attrs["vxlan_port"] = spec.port
    if spec.gbp:
        attrs["vxlan_gbp"] = True
    ipr.link("add", **attrs)
    return find_link(ipr, spec.name)


def delete_link(ipr, index: int) -> None:
    ipr.link("del", index=index)


def configure_device(
    ipr, index: int, name: str, address: IPv4Address, network: IPv4Network, mtu: int
) -> list[str]:
    """Make ``address/32`` the device's only address inside ``network``, set the MTU, bring
    it up, and stop it from taking IPv6 router advertisements. Returns what it changed."""
    changed = []
    for msg in ipr.get_addr(index=index, family=AF_INET):
        ip = IPv4Address(msg.get_attr("IFA_ADDRESS"))
        if ip in network and (ip != address or msg["prefixlen"] != 32):
            ipr.addr("del", index=index, address=str(ip), prefixlen=msg["prefixlen"])
            changed.append(f"removed address {ip}/{msg['prefixlen']}")
    have = {
        IPv4Address(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(index=index, family=AF_INET)
    }
    if address not in have:
        ipr.addr("replace", index=index, address=str(address), prefixlen=32)
        changed.append(f"address {address}/32")
    link = ipr.get_links(index)[0]
    if link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
        changed.append(f"MTU {mtu}")
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=index, state="up")
        changed.append("up")
    accept_ra = Path(f"/proc/sys/net/ipv6/conf/{name}/accept_ra")
    try:
        if accept_ra.read_text().strip() != "0":
            accept_ra.write_text("0")
    except OSError:
        pass  # IPv6 disabled: nothing to turn off
    return changed


def read_state(ipr, devices: Devices) -> KernelState:
    """What pyflannel owns in the kernel now: permanent IPv4 neighbours and permanent FDB
    entries on the VXLAN device, and routes with our protocol number in the main table."""
    state = KernelState()
    index = devices.vxlan
    if index is not None:
        for msg in ipr.neigh("dump", ifindex=index, family=AF_INET):
            if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT:
                state.neighbours[IPv4Address(msg.get_attr("NDA_DST"))] = msg.get_attr("NDA_LLADDR")
        for msg in ipr.fdb("dump", ifindex=index):
            dst = msg.get_attr("NDA_DST")
            if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT and dst:
                state.fdb[msg.get_attr("NDA_LLADDR")] = IPv4Address(dst)
    for msg in ipr.route("dump", family=AF_INET, table=RT_TABLE_MAIN, proto=RTPROT_PYFLANNEL):
        if msg["proto"] != RTPROT_PYFLANNEL:
            continue
        dst = IPv4Network((msg.get_attr("RTA_DST") or "0.0.0.0", msg["dst_len"]))
        state.routes[dst] = _route_of(msg, devices)
    return state


def _route_of(msg, devices: Devices) -> Route:
    gateway = msg.get_attr("RTA_GATEWAY")
    gateway = IPv4Address(gateway) if gateway else None
    oif = msg.get_attr("RTA_OIF")
    if oif is not None and oif == devices.tun:
        return Route(gateway, "tun")
    if oif is not None and oif == devices.vxlan and msg["flags"] & RTNH_F_ONLINK:
        return Route(gateway, "vxlan")
    return Route(gateway, "underlay" if oif not in (devices.vxlan, devices.tun) else "other")


def apply_op(ipr, devices: Devices, op: Op) -> None:
    """Carry out one plan operation; an absent entry on delete counts as success."""
    try:
        _OPS[(op.table, op.action)](ipr, devices, op.key, op.value)
    except NetlinkError as e:
        if op.action == "delete" and e.code in _ABSENT:
            return
        raise


def apply_all(ipr, devices: Devices, ops: list[Op]) -> list[tuple[Op, str]]:
    """All operations in one go on the netlink thread; the failures, with their errors."""
    failed = []
    for op in ops:
        try:
            apply_op(ipr, devices, op)
        except Exception as e:
            failed.append((op, describe_error(e)))
    return failed


def _neigh_replace(ipr, devices, ip, mac):
    ipr.neigh("replace", ifindex=devices.vxlan, dst=str(ip), lladdr=mac, state=NUD_PERMANENT)


def _neigh_delete(ipr, devices, ip, mac):
    ipr.neigh("del", ifindex=devices.vxlan, dst=str(ip), lladdr=mac)


def _fdb_replace(ipr, devices, mac, dst):
    ipr.fdb(
        "replace",
        ifindex=devices.vxlan,
        lladdr=mac,
        dst=str(dst),
        flags=NTF_SELF,
        state=NUD_PERMANENT,
    )


def _fdb_delete(ipr, devices, mac, dst):
    ipr.fdb("del", ifindex=devices.vxlan, lladdr=mac, dst=str(dst), flags=NTF_SELF)


def _route_args(devices: Devices, dst: IPv4Network, route: Route) -> dict:
    args = dict(dst=str(dst), table=RT_TABLE_MAIN, proto=RTPROT_PYFLANNEL)
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    if route.via == "vxlan":
        args.update(oif=devices.vxlan, flags=RTNH_F_ONLINK)
    elif route.via == "tun":
        args.update(oif=devices.tun)
    return args


def _route_replace(ipr, devices, dst, route):
    ipr.route("replace", **_route_args(devices, dst, route))


def _route_delete(ipr, devices, dst, route):
    ipr.route("del", dst=str(dst), table=RT_TABLE_MAIN, proto=RTPROT_PYFLANNEL)


_OPS = {
    ("neigh", "replace"): _neigh_replace,
    ("neigh", "delete"): _neigh_delete,
    ("fdb", "replace"): _fdb_replace,
    ("fdb", "delete"): _fdb_delete,
    ("route", "replace"): _route_replace,
    ("route", "delete"): _route_delete,
}


def directly_reachable(ipr, ip: IPv4Address, underlay_index: int) -> bool:
    """DirectRouting: is ``ip`` on a link of ours (no gateway), via the underlay?"""
    try:
        routes = ipr.route("get", dst=str(ip))
    except NetlinkError:
        return False
    return (
        len(routes) == 1
        and routes[0].get_attr("RTA_GATEWAY") is None
        and routes[0].get_attr("RTA_OIF") == underlay_index
    )
