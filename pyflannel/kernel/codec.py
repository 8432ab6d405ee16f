"""Netlink messages for the three kinds of kernel entries pyflannel owns, encoded and decoded
with ``struct``. Pure: bytes in, bytes out.

Why not pyroute2 here: its sync API runs an event loop per request (~290 us each) and its
encoder costs ~70 us a message, so 5,000 peers (15,000 entries) took 4.3 s to program and
1 s to dump. These few message shapes cost a few microseconds each and can be sent many per
system call (bench/scale.py). Devices, addresses and route lookups: device_codec.py.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# nlmsghdr / message types / flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_HDR = struct.Struct("=LHHLL")
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
DELETE = NLM_F_REQUEST | NLM_F_ACK

RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
NDMSG = struct.Struct("=BxxxiHBB")  # family ifindex state flags type
RTATTR = struct.Struct("=HH")
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
NDA_DST, NDA_LLADDR = 1, 2
AF_INET, AF_INET6, AF_BRIDGE = socket.AF_INET, socket.AF_INET6, 7
RTPROT_PYFLANNEL = 152  # our routes: `ip route show proto 152`
RT_TABLE_MAIN, RTN_UNICAST, RTN_BLACKHOLE = 254, 1, 6
RT_SCOPE_UNIVERSE = 0
RTNH_F_ONLINK = 4
NUD_PERMANENT, NTF_SELF = 0x80, 0x02


def attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def family_of(address: IPAddress | IPNetwork) -> int:
    return AF_INET6 if address.version == 6 else AF_INET


def route_replace(
    seq: int,
    dst: IPNetwork,
    gateway: IPAddress | None,
    oif: int | None,
    onlink: bool,
    proto: int,
    kind: int = RTN_UNICAST,
    priority: int | None = None,
) -> bytes:
    body = RTMSG.pack(
        family_of(dst),
        dst.prefixlen,
        0,
        0,
        RT_TABLE_MAIN,
        proto,
        RT_SCOPE_UNIVERSE,
        kind,
        RTNH_F_ONLINK if onlink else 0,
    )
    body += attr(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += attr(RTA_GATEWAY, gateway.packed)
    if oif is not None:
        body += attr(RTA_OIF, struct.pack("=I", oif))
    if priority is not None:
        body += attr(RTA_PRIORITY, struct.pack("=I", priority))
    return message(RTM_NEWROUTE, REPLACE, seq, body)


def route_delete(seq: int, dst: IPNetwork, proto: int) -> bytes:
    """Delete the route to ``dst`` in the main table only if it carries our protocol. Scope
    universe, as all our routes are: this kernel does not match RT_SCOPE_NOWHERE here."""
    family = family_of(dst)
    body = RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, 0, 0)
    return message(RTM_DELROUTE, DELETE, seq, body + attr(RTA_DST, dst.network_address.packed))


def neighbour_replace(seq: int, ifindex: int, ip: IPAddress, mac: str) -> bytes:
    body = NDMSG.pack(family_of(ip), ifindex, NUD_PERMANENT, 0, 0)
    body += attr(NDA_DST, ip.packed) + attr(NDA_LLADDR, mac_bytes(mac))
    return message(RTM_NEWNEIGH, REPLACE, seq, body)


def neighbour_delete(seq: int, ifindex: int, ip: IPAddress) -> bytes:
    body = NDMSG.pack(family_of(ip), ifindex, 0, 0, 0) + attr(NDA_DST, ip.packed)
    return message(RTM_DELNEIGH, DELETE, seq, body)


def fdb_replace(seq: int, ifindex: int, mac: str, dst: IPAddress) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
    body += attr(NDA_LLADDR, mac_bytes(mac)) + attr(NDA_DST, dst.packed)
    return message(RTM_NEWNEIGH, REPLACE, seq, body)


def fdb_delete(seq: int, ifindex: int, mac: str, dst: IPAddress) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, ifindex, 0, NTF_SELF, 0)
    body += attr(NDA_LLADDR, mac_bytes(mac)) + attr(NDA_DST, dst.packed)
    return message(RTM_DELNEIGH, DELETE, seq, body)


def dump_request(kind: int, family: int, seq: int) -> bytes:
    if kind == RTM_GETROUTE:
        body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        body = NDMSG.pack(family, 0, 0, 0, 0)
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) of each netlink message in a datagram."""
    view, offset = memoryview(data), 0
    while offset + NLMSG_HDR.size <= len(view):
        length, kind, flags, seq, _ = NLMSG_HDR.unpack_from(view, offset)
        if length < NLMSG_HDR.size:
            break
        yield kind, flags, seq, view[offset + NLMSG_HDR.size : offset + length]
        offset += (length + 3) & ~3


def attributes(payload: memoryview, offset: int) -> dict[int, memoryview]:
    attrs, n = {}, len(payload)
    while offset + RTATTR.size <= n:
        length, kind = RTATTR.unpack_from(payload, offset)
        if length < RTATTR.size:
            break
        attrs[kind & 0x3FFF] = payload[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def error_code(payload: memoryview) -> int:
    """The (positive) errno of an NLMSG_ERROR, 0 for an ack."""
    return -struct.unpack_from("=i", payload)[0]


def decode_route(
    payload: memoryview,
) -> tuple[IPNetwork, IPAddress | None, int | None, int, int, int, int] | None:
    """(dst, gateway, oif, flags, protocol, table, type) of an IPv4 or IPv6 route message,
    else None."""
    family, dst_len, _, _, table, proto, _, kind, flags = RTMSG.unpack_from(payload)
    if family not in (AF_INET, AF_INET6):
        return None
    address: type[IPv4Address] | type[IPv6Address]
    network: type[IPv4Network] | type[IPv6Network]
    address, network = (
        (IPv4Address, IPv4Network) if family == AF_INET else (IPv6Address, IPv6Network)
    )
    a = attributes(payload, RTMSG.size)
    if RTA_TABLE in a:
        table = struct.unpack("=I", a[RTA_TABLE])[0]
    dst = address(bytes(a[RTA_DST])) if RTA_DST in a else address(0)
    gateway = address(bytes(a[RTA_GATEWAY])) if RTA_GATEWAY in a else None
    oif = struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else None
    return network((dst, dst_len)), gateway, oif, flags, proto, table, kind


def decode_neighbour(payload: memoryview) -> tuple[int, int, int, int, bytes | None, bytes | None]:
    """(family, ifindex, state, flags, NDA_DST bytes, NDA_LLADDR bytes) of a neighbour message."""
    family, ifindex, state, flags, _ = NDMSG.unpack_from(payload)
    a = attributes(payload, NDMSG.size)
    dst, lladdr = a.get(NDA_DST), a.get(NDA_LLADDR)
    return (
        family,
        ifindex,
        state,
        flags,
        bytes(dst) if dst is not None else None,
        bytes(lladdr) if lladdr is not None else None,
    )


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
