"""Netlink framing and numbers: the message header, attributes, errors, and the constants of
linux/netlink.h and rtnetlink.h that pyflannel uses, each defined here once. Pure: bytes in,
bytes out. The messages themselves are declared in message.py, the requests built in
requests.py.
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
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
DELETE = NLM_F_REQUEST | NLM_F_ACK

RTATTR = struct.Struct("=HH")
AF_INET, AF_INET6, AF_BRIDGE = socket.AF_INET, socket.AF_INET6, 7
RTPROT_PYFLANNEL = 152  # our routes: `ip route show proto 152`
RT_TABLE_MAIN, RTN_UNICAST, RTN_BLACKHOLE = 254, 1, 6
RT_SCOPE_UNIVERSE = 0
RTNH_F_ONLINK = 4
RTAX_MTU = 2  # a route metric: its MTU (linux/rtnetlink.h)
NUD_PERMANENT, NTF_SELF = 0x80, 0x02
NLM_F_EXCL = 0x200
IFF_UP = 0x1
IFA_F_TEMPORARY, IFA_F_NODAD, IFA_F_DEPRECATED = 0x01, 0x02, 0x20


def attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def family_of(address: IPAddress | IPNetwork) -> int:
    return AF_INET6 if address.version == 6 else AF_INET


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


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
