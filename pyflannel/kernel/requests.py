"""Every request pyflannel sends on its route-netlink socket, built from the message tables
(message.py): devices and their addresses, route lookups, dumps, and the three kinds of
kernel entries it owns per peer (routes, neighbours, FDB entries). Pure: arguments in, bytes
out.

Why not pyroute2 here: its sync API runs an event loop per request (~290 us each) and its
encoder costs ~70 us a message, so 5,000 peers (15,000 entries) took 4.3 s to program and
1 s to dump. These few message shapes cost a few microseconds each and can be sent many per
system call (bench/scale.py).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pyflannel.kernel.codec import (
    AF_BRIDGE,
    DELETE,
    IFF_UP,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NTF_SELF,
    NUD_PERMANENT,
    REPLACE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTAX_MTU,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    IPAddress,
    IPNetwork,
    family_of,
)
from pyflannel.kernel.message import ADDR, LINK, NEIGH, ROUTE, Kind

DUMPS: dict[int, Kind] = {
    RTM_GETLINK: LINK,
    RTM_GETADDR: ADDR,
    RTM_GETROUTE: ROUTE,
    RTM_GETNEIGH: NEIGH,
}

# -- devices and addresses ---------------------------------------------------------------------


def get_link(seq: int, index: int = 0, name: str = "") -> bytes:
    """One link, by index or by name (the answer is an RTM_NEWLINK, or ENODEV)."""
    return LINK.encode(
        RTM_GETLINK, NLM_F_REQUEST, seq, {"index": index}, {"IFLA_IFNAME": name or None}
    )


def dump(seq: int, kind: int, family: int = 0) -> bytes:
    """Every link, address, route or neighbour (RTM_GET*) of a family."""
    return DUMPS[kind].encode(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, {"family": family}, {})


def new_link(
    seq: int, name: str, kind: str, mac: str = "", mtu: int = 0, data: dict[str, Any] | None = None
) -> bytes:
    """Create device ``name`` of ``kind``, with its kind's data (fails with EEXIST if there is
    one)."""
    attrs = {
        "IFLA_IFNAME": name,
        "IFLA_ADDRESS": mac or None,
        "IFLA_MTU": mtu or None,
        "IFLA_LINKINFO": {"IFLA_INFO_KIND": kind, "IFLA_INFO_DATA": data},
    }
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return LINK.encode(RTM_NEWLINK, flags, seq, {}, attrs)


def set_link(
    seq: int, index: int, mtu: int = 0, up: bool | None = None, txqlen: int | None = None
) -> bytes:
    """Change a device: its MTU, up or down, its transmit queue length."""
    header = {"index": index}
    if up is not None:
        header.update(flags=IFF_UP if up else 0, change=IFF_UP)
    attrs = {"IFLA_MTU": mtu or None, "IFLA_TXQLEN": txqlen}
    return LINK.encode(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, header, attrs)


def delete_link(seq: int, index: int) -> bytes:
    return LINK.encode(RTM_DELLINK, DELETE, seq, {"index": index}, {})


def address(
    seq: int, index: int, ip: str, prefixlen: int, delete: bool = False, flags: int = 0
) -> bytes:
    """Add (replacing an equal one) or, ``delete``, remove address ``ip/prefixlen``.
    IPv4 carries it as both IFA_LOCAL and IFA_ADDRESS, as ``ip addr`` does."""
    parsed: IPv4Address | IPv6Address = ip_address(ip)
    header = dict(family=family_of(parsed), prefixlen=prefixlen, flags=flags & 0xFF, index=index)
    attrs = {"IFA_LOCAL": parsed if parsed.version == 4 else None, "IFA_ADDRESS": parsed}
    if delete:
        return ADDR.encode(RTM_DELADDR, DELETE, seq, header, attrs)
    how = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return ADDR.encode(RTM_NEWADDR, how, seq, header, attrs)


def get_route(seq: int, dst: str) -> bytes:
    """The kernel's route to one address (``ip route get``)."""
    parsed: IPv4Address | IPv6Address = ip_address(dst)
    header = {"family": family_of(parsed), "dst_len": parsed.max_prefixlen}
    return ROUTE.encode(RTM_GETROUTE, NLM_F_REQUEST, seq, header, {"RTA_DST": parsed})


# -- the entries pyflannel owns per peer -----------------------------------------------------


def route_replace(
    seq: int,
    dst: IPNetwork,
    gateway: IPAddress | None,
    oif: int | None,
    onlink: bool,
    proto: int,
    kind: int = RTN_UNICAST,
    priority: int | None = None,
    mtu: int = 0,
) -> bytes:
    """``mtu``: the route's MTU, locked (``ip route ... mtu lock N``: the kernel keeps it
    whatever PMTU discovery learns); 0: none."""
    header = dict(
        family=family_of(dst),
        dst_len=dst.prefixlen,
        table=RT_TABLE_MAIN,
        proto=proto,
        scope=RT_SCOPE_UNIVERSE,
        type=kind,
        flags=RTNH_F_ONLINK if onlink else 0,
    )
    attrs = {
        "RTA_DST": dst.network_address,
        "RTA_GATEWAY": gateway,
        "RTA_OIF": oif,
        "RTA_PRIORITY": priority,
        "RTA_METRICS": {"RTAX_LOCK": 1 << RTAX_MTU, "RTAX_MTU": mtu} if mtu else None,
    }
    return ROUTE.encode(RTM_NEWROUTE, REPLACE, seq, header, attrs)


def route_delete(seq: int, dst: IPNetwork, proto: int) -> bytes:
    """Delete the route to ``dst`` in the main table only if it carries our protocol. Scope
    universe, as all our routes are: this kernel does not match RT_SCOPE_NOWHERE here."""
    header = dict(family=family_of(dst), dst_len=dst.prefixlen, table=RT_TABLE_MAIN, proto=proto)
    return ROUTE.encode(RTM_DELROUTE, DELETE, seq, header, {"RTA_DST": dst.network_address})


def neighbour_replace(seq: int, ifindex: int, ip: IPAddress, mac: str) -> bytes:
    header = dict(family=family_of(ip), ifindex=ifindex, state=NUD_PERMANENT)
    return NEIGH.encode(RTM_NEWNEIGH, REPLACE, seq, header, {"NDA_DST": ip, "NDA_LLADDR": mac})


def neighbour_delete(seq: int, ifindex: int, ip: IPAddress) -> bytes:
    header = dict(family=family_of(ip), ifindex=ifindex)
    return NEIGH.encode(RTM_DELNEIGH, DELETE, seq, header, {"NDA_DST": ip})


def fdb_replace(seq: int, ifindex: int, mac: str, dst: IPAddress) -> bytes:
    header = dict(family=AF_BRIDGE, ifindex=ifindex, state=NUD_PERMANENT, flags=NTF_SELF)
    return NEIGH.encode(RTM_NEWNEIGH, REPLACE, seq, header, {"NDA_LLADDR": mac, "NDA_DST": dst})


def fdb_delete(seq: int, ifindex: int, mac: str, dst: IPAddress) -> bytes:
    header = dict(family=AF_BRIDGE, ifindex=ifindex, flags=NTF_SELF)
    return NEIGH.encode(RTM_DELNEIGH, DELETE, seq, header, {"NDA_LLADDR": mac, "NDA_DST": dst})
