"""Netlink requests for devices and their addresses (links, addresses, route lookups), encoded
with ``struct``. Pure: arguments in, bytes out. With ``codec.py`` (routes, neighbours) these
are every request the daemon sends on its own socket (kernel/iproute.py)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyflannel.kernel import codec
from pyflannel.kernel.codec import (
    DELETE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    attr,
    mac_bytes,
    message,
)
from pyflannel.kernel.message import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_TXQLEN,
    IFLA_VXLAN_GBP,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_LOCAL6,
    IFLA_VXLAN_PORT,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
)

NLM_F_EXCL = 0x200
NLA_F_NESTED = 0x8000
IFF_UP = 0x1


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def get_link(seq: int, index: int = 0, name: str = "") -> bytes:
    """One link, by index or by name (the answer is an RTM_NEWLINK, or ENODEV)."""
    body = IFINFOMSG.pack(0, 0, index, 0, 0) + (attr(IFLA_IFNAME, _name(name)) if name else b"")
    return message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def dump(seq: int, kind: int, family: int = 0) -> bytes:
    """Every link (RTM_GETLINK), address (RTM_GETADDR) or route (RTM_GETROUTE) of a family."""
    if kind == RTM_GETLINK:
        body = IFINFOMSG.pack(family, 0, 0, 0, 0)
    elif kind == RTM_GETADDR:
        body = IFADDRMSG.pack(family, 0, 0, 0, 0)
    else:
        return codec.dump_request(kind, family, seq)
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def vxlan_data(
    vni: int,
    local: str,
    link: int,
    learning: bool,
    port: int = 0,
    gbp: bool = False,
) -> bytes:
    """IFLA_INFO_DATA of a VXLAN device."""
    address = ip_address(local)
    data = attr(IFLA_VXLAN_ID, _u32(vni))
    if link:
        data += attr(IFLA_VXLAN_LINK, _u32(link))
    kind = IFLA_VXLAN_LOCAL6 if address.version == 6 else IFLA_VXLAN_LOCAL
    data += attr(kind, address.packed)
    data += attr(IFLA_VXLAN_LEARNING, bytes([int(learning)]))
    if port:
        data += attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    if gbp:
        data += attr(IFLA_VXLAN_GBP, b"")
    return data


def new_link(
    seq: int, name: str, kind: str, mac: str = "", mtu: int = 0, data: bytes = b""
) -> bytes:
    """Create device ``name`` of ``kind`` (fails with EEXIST if there is one)."""
    body = IFINFOMSG.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
    if mac:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    if mtu:
        body += attr(IFLA_MTU, _u32(mtu))
    info = attr(IFLA_INFO_KIND, _name(kind))
    if data:
        info += attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body += attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return message(RTM_NEWLINK, flags, seq, body)


def set_link(
    seq: int, index: int, mtu: int = 0, up: bool | None = None, txqlen: int | None = None
) -> bytes:
    """Change a device: its MTU, up or down, its transmit queue length."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    body = IFINFOMSG.pack(0, 0, index, flags, change)
    if mtu:
        body += attr(IFLA_MTU, _u32(mtu))
    if txqlen is not None:
        body += attr(IFLA_TXQLEN, _u32(txqlen))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def delete_link(seq: int, index: int) -> bytes:
    return message(RTM_DELLINK, DELETE, seq, IFINFOMSG.pack(0, 0, index, 0, 0))


def address(
    seq: int, index: int, ip: str, prefixlen: int, delete: bool = False, flags: int = 0
) -> bytes:
    """Add (replacing an equal one) or, ``delete``, remove address ``ip/prefixlen``.
    IPv4 carries it as both IFA_LOCAL and IFA_ADDRESS, as ``ip addr`` does."""
    parsed: IPv4Address | IPv6Address = ip_address(ip)
    body = IFADDRMSG.pack(codec.family_of(parsed), prefixlen, flags & 0xFF, 0, index)
    if parsed.version == 4:
        body += attr(IFA_LOCAL, parsed.packed)
    body += attr(IFA_ADDRESS, parsed.packed)
    if delete:
        kind, how = RTM_DELADDR, DELETE
    else:
        kind, how = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return message(kind, how, seq, body)


def get_route(seq: int, dst: str) -> bytes:
    """The kernel's route to one address (``ip route get``)."""
    parsed: IPv4Address | IPv6Address = ip_address(dst)
    family = codec.family_of(parsed)
    body = codec.RTMSG.pack(family, parsed.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body += attr(codec.RTA_DST, parsed.packed)
    return message(codec.RTM_GETROUTE, NLM_F_REQUEST, seq, body)
