"""Route-netlink messages decoded into what pyflannel reads of them: the fixed header's fields
by key and the attributes it knows by name (``get_attr``), spelled as pyroute2 spells them so
that one reading serves answers and notifications alike. Pure: bytes in, a dict out.

Only the attributes some part of pyflannel reads are named; the rest are skipped.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from pyflannel.kernel import codec

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22

IFINFOMSG = struct.Struct("=BxHiII")  # family type index flags change
IFADDRMSG = struct.Struct("=BBBBi")  # family prefixlen flags scope index

# attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h): decoded here, encoded in
# device_codec.py
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_TXQLEN, IFLA_LINKINFO = 1, 3, 4, 13, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 15, 17, 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_PREFSRC = 7

EVENTS = {
    RTM_NEWLINK: "RTM_NEWLINK",
    RTM_DELLINK: "RTM_DELLINK",
    RTM_NEWADDR: "RTM_NEWADDR",
    RTM_DELADDR: "RTM_DELADDR",
    codec.RTM_NEWROUTE: "RTM_NEWROUTE",
    codec.RTM_DELROUTE: "RTM_DELROUTE",
    codec.RTM_NEWNEIGH: "RTM_NEWNEIGH",
    codec.RTM_DELNEIGH: "RTM_DELNEIGH",
}


def _u8(raw: memoryview) -> int:
    return raw[0]


def _u32(raw: memoryview) -> int:
    return int(struct.unpack_from("=I", raw)[0])


def _be16(raw: memoryview) -> int:
    return int(struct.unpack_from("!H", raw)[0])


def _text(raw: memoryview) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def _ip(raw: memoryview) -> str:
    family = socket.AF_INET6 if len(raw) == 16 else socket.AF_INET
    return socket.inet_ntop(family, bytes(raw))


def _mac(raw: memoryview) -> str:
    return codec.mac_text(bytes(raw))


def _flag(raw: memoryview) -> bool:
    return True


Decoder = Callable[[memoryview], Any]

VXLAN_DATA: dict[int, tuple[str, Decoder]] = {
    IFLA_VXLAN_ID: ("IFLA_VXLAN_ID", _u32),
    IFLA_VXLAN_LINK: ("IFLA_VXLAN_LINK", _u32),
    IFLA_VXLAN_LOCAL: ("IFLA_VXLAN_LOCAL", _ip),
    IFLA_VXLAN_LEARNING: ("IFLA_VXLAN_LEARNING", _u8),
    IFLA_VXLAN_PORT: ("IFLA_VXLAN_PORT", _be16),
    IFLA_VXLAN_LOCAL6: ("IFLA_VXLAN_LOCAL6", _ip),
    IFLA_VXLAN_GBP: ("IFLA_VXLAN_GBP", _flag),
}


def _link_info(raw: memoryview) -> Message:
    info = Message()
    attrs = codec.attributes(raw, 0)
    kind = _text(attrs[IFLA_INFO_KIND]) if IFLA_INFO_KIND in attrs else ""
    if kind:
        info.attrs["IFLA_INFO_KIND"] = kind
    if IFLA_INFO_DATA in attrs and kind == "vxlan":
        info.attrs["IFLA_INFO_DATA"] = _named(attrs[IFLA_INFO_DATA], 0, VXLAN_DATA)
    return info


LINK: dict[int, tuple[str, Decoder]] = {
    IFLA_ADDRESS: ("IFLA_ADDRESS", _mac),
    IFLA_IFNAME: ("IFLA_IFNAME", _text),
    IFLA_MTU: ("IFLA_MTU", _u32),
    IFLA_LINKINFO: ("IFLA_LINKINFO", _link_info),
}
ADDRESS: dict[int, tuple[str, Decoder]] = {
    IFA_ADDRESS: ("IFA_ADDRESS", _ip),
    IFA_FLAGS: ("IFA_FLAGS", _u32),
}
ROUTE: dict[int, tuple[str, Decoder]] = {
    codec.RTA_DST: ("RTA_DST", _ip),
    codec.RTA_OIF: ("RTA_OIF", _u32),
    codec.RTA_GATEWAY: ("RTA_GATEWAY", _ip),
    RTA_PREFSRC: ("RTA_PREFSRC", _ip),
    codec.RTA_TABLE: ("RTA_TABLE", _u32),
}
NEIGHBOUR: dict[int, tuple[str, Decoder]] = {
    codec.NDA_DST: ("NDA_DST", _ip),
    codec.NDA_LLADDR: ("NDA_LLADDR", _mac),
}


class Message(dict):
    """A decoded message: header fields by key (``msg["index"]``), attributes by name."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, Any] = {}

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)

    def __bool__(self) -> bool:
        return True  # present, even as a nested attribute set with no header fields


def _named(payload: memoryview, offset: int, names: dict[int, tuple[str, Decoder]]) -> Message:
    msg = Message()
    for kind, raw in codec.attributes(payload, offset).items():
        if kind in names:
            name, decode = names[kind]
            try:
                msg.attrs[name] = decode(raw)
            except (ValueError, struct.error, IndexError):
                pass  # a malformed attribute reads as absent
    return msg


def decode(kind: int, payload: memoryview) -> Message | None:
    """The message of type ``kind``, or None for a type pyflannel does not read or a payload
    shorter than its header."""
    try:
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            family, ifi_type, index, flags, change = IFINFOMSG.unpack_from(payload)
            fields = dict(family=family, ifi_type=ifi_type, index=index, flags=flags, change=change)
            return _fill(_named(payload, IFINFOMSG.size, LINK), kind, fields)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(payload)
            fields = dict(family=family, prefixlen=prefixlen, flags=flags, scope=scope, index=index)
            return _fill(_named(payload, IFADDRMSG.size, ADDRESS), kind, fields)
        if kind in (codec.RTM_NEWROUTE, codec.RTM_DELROUTE):
            values = codec.RTMSG.unpack_from(payload)
            keys = ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type")
            fields = {**dict(zip(keys, values[:8], strict=True)), "flags": values[8]}
            return _fill(_named(payload, codec.RTMSG.size, ROUTE), kind, fields)
        if kind in (codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH):
            family, ifindex, state, flags, ndm_type = codec.NDMSG.unpack_from(payload)
            fields = dict(family=family, ifindex=ifindex, state=state, flags=flags)
            fields["ndm_type"] = ndm_type
            return _fill(_named(payload, codec.NDMSG.size, NEIGHBOUR), kind, fields)
    except struct.error:
        return None
    return None


def _fill(msg: Message, kind: int, fields: dict[str, Any]) -> Message:
    msg.update(fields, event=EVENTS[kind])
    return msg
