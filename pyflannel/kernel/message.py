"""Route-netlink messages, declared once and used both ways: each message kind's fixed header
and its attribute table (number, name, type: the rows of pyroute2's ``nla_map``). Requests are
encoded from names and values (kernel/requests.py); answers and notifications decode to a
``Message``: header fields by key, attributes by name (spelled as pyroute2 spells them) with
typed values (an address is an ``ipaddress`` object, a MAC its text), so one reading serves
answers and notifications alike. Pure: values in, bytes out, and back.

A new attribute is one row in its table: it is then both sent and read. Attributes not in a
table are skipped when read.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pyflannel.kernel import codec
from pyflannel.kernel.codec import RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK

NLA_F_NESTED = 0x8000


# -- attribute types ---------------------------------------------------------------------------


class AttrType:
    """How one attribute's value is carried: ``encode`` to its payload, ``decode`` back."""

    nested = False

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, raw: memoryview) -> Any:
        raise NotImplementedError


class Scalar(AttrType):
    def __init__(self, fmt: str):
        self.struct = struct.Struct(fmt)

    def encode(self, value: int) -> bytes:
        return self.struct.pack(value)

    def decode(self, raw: memoryview) -> int:
        return int(self.struct.unpack_from(raw)[0])


class Address(AttrType):
    """An IPv4 or IPv6 address (its length says which)."""

    def encode(self, value: str | IPv4Address | IPv6Address) -> bytes:
        return (ip_address(value) if isinstance(value, str) else value).packed

    def decode(self, raw: memoryview) -> IPv4Address | IPv6Address:
        if len(raw) == 4:
            return IPv4Address(bytes(raw))
        if len(raw) == 16:
            return IPv6Address(bytes(raw))
        raise ValueError(f"an address of {len(raw)} bytes")


class Mac(AttrType):
    def encode(self, value: str) -> bytes:
        return codec.mac_bytes(value)

    def decode(self, raw: memoryview) -> str:
        return codec.mac_text(bytes(raw))


class Text(AttrType):
    def encode(self, value: str) -> bytes:
        return value.encode() + b"\0"

    def decode(self, raw: memoryview) -> str:
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


class Flag(AttrType):
    """Present or absent, no payload (IFLA_VXLAN_GBP)."""

    def encode(self, value: bool) -> bytes:
        return b""

    def decode(self, raw: memoryview) -> bool:
        return True


U8, U32, BE16 = Scalar("=B"), Scalar("=I"), Scalar("!H")
ADDRESS, MAC, TEXT, FLAG = Address(), Mac(), Text(), Flag()


class Message(dict):
    """A decoded message: header fields by key (``msg["index"]``), attributes by name."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, Any] = {}

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)

    def __bool__(self) -> bool:
        return True  # present, even as a nested attribute set with no header fields


class Attrs:
    """One attribute table: rows of (number, name, type)."""

    def __init__(self, *rows: tuple[int, str, AttrType]):
        self.by_number = {number: (name, kind) for number, name, kind in rows}
        self.by_name = {name: (number, kind) for number, name, kind in rows}
        # name -> (the attribute's type field, its encoder): the hot path of bulk requests
        self._encoders = {
            name: (number | NLA_F_NESTED if kind.nested else number, kind.encode)
            for number, name, kind in rows
        }

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """The attributes named, in the order given; a None value is left out."""
        encoders, attr = self._encoders, codec.attr
        out = []
        for name, value in values.items():
            if value is not None:
                number, encode = encoders[name]
                out.append(attr(number, encode(value)))
        return b"".join(out)

    def decode(self, payload: memoryview, offset: int = 0) -> Message:
        msg = Message()
        for number, raw in codec.attributes(payload, offset).items():
            row = self.by_number.get(number)
            if row is None:
                continue
            name, kind = row
            try:
                msg.attrs[name] = kind.decode(raw)
            except (ValueError, struct.error, IndexError):
                pass  # a malformed attribute reads as absent
        return msg


class Nested(AttrType):
    nested = True

    def __init__(self, table: Attrs):
        self.table = table

    def encode(self, value: Mapping[str, Any]) -> bytes:
        return self.table.encode(value)

    def decode(self, raw: memoryview) -> Message:
        return self.table.decode(raw)


class LinkInfo(AttrType):
    """IFLA_LINKINFO: the device's kind, and its kind's own data (a table per kind)."""

    nested = True

    def __init__(self, data: Mapping[str, Attrs]):
        self.data = data
        self.table = Attrs((1, "IFLA_INFO_KIND", TEXT), (2, "IFLA_INFO_DATA", _Raw()))

    def encode(self, value: Mapping[str, Any]) -> bytes:
        kind = value["IFLA_INFO_KIND"]
        data = value.get("IFLA_INFO_DATA")
        encoded = self.data[kind].encode(data) if data else None
        return self.table.encode({"IFLA_INFO_KIND": kind, "IFLA_INFO_DATA": encoded})

    def decode(self, raw: memoryview) -> Message:
        info = self.table.decode(raw)
        kind = info.attrs.get("IFLA_INFO_KIND", "")
        data = info.attrs.pop("IFLA_INFO_DATA", None)
        if data is not None and kind in self.data:
            info.attrs["IFLA_INFO_DATA"] = self.data[kind].decode(data)
        if not kind:
            info.attrs.pop("IFLA_INFO_KIND", None)
        return info


class _Raw(AttrType):
    """Bytes as they are (a kind's data, read by the table of its kind)."""

    nested = True

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, raw: memoryview) -> memoryview:
        return raw


# -- the message kinds ------------------------------------------------------------------------


class Header:
    """A message kind's fixed header: its struct and its fields' names."""

    def __init__(self, fmt: str, names: str):
        self.struct = struct.Struct(fmt)
        self.names = tuple(names.split())

    def pack(self, fields: Mapping[str, int]) -> bytes:
        get = fields.get
        return self.struct.pack(*[get(name, 0) for name in self.names])

    def unpack(self, payload: memoryview) -> dict[str, int]:
        return dict(zip(self.names, self.struct.unpack_from(payload), strict=True))


class Kind:
    """One kind of message: its header and its attributes."""

    def __init__(self, header: Header, attrs: Attrs):
        self.header, self.attrs = header, attrs

    def encode(
        self,
        msg_type: int,
        flags: int,
        seq: int,
        header: Mapping[str, int],
        attrs: Mapping[str, Any],
    ) -> bytes:
        return codec.message(
            msg_type, flags, seq, self.header.pack(header) + self.attrs.encode(attrs)
        )

    def decode(self, payload: memoryview) -> Message:
        msg = self.attrs.decode(payload, self.header.struct.size)
        msg.update(self.header.unpack(payload))
        return msg


VXLAN = Attrs(  # linux/if_link.h IFLA_VXLAN_*
    (1, "IFLA_VXLAN_ID", U32),
    (3, "IFLA_VXLAN_LINK", U32),
    (4, "IFLA_VXLAN_LOCAL", ADDRESS),
    (7, "IFLA_VXLAN_LEARNING", U8),
    (15, "IFLA_VXLAN_PORT", BE16),
    (17, "IFLA_VXLAN_LOCAL6", ADDRESS),
    (23, "IFLA_VXLAN_GBP", FLAG),
)
LINK = Kind(
    Header("=BxHiII", "family ifi_type index flags change"),  # ifinfomsg
    Attrs(
        (1, "IFLA_ADDRESS", MAC),
        (3, "IFLA_IFNAME", TEXT),
        (4, "IFLA_MTU", U32),
        (13, "IFLA_TXQLEN", U32),
        (18, "IFLA_LINKINFO", LinkInfo({"vxlan": VXLAN})),
    ),
)
ADDR = Kind(
    Header("=BBBBi", "family prefixlen flags scope index"),  # ifaddrmsg
    Attrs((1, "IFA_ADDRESS", ADDRESS), (2, "IFA_LOCAL", ADDRESS), (8, "IFA_FLAGS", U32)),
)
METRICS = Attrs((1, "RTAX_LOCK", U32), (2, "RTAX_MTU", U32))  # linux/rtnetlink.h RTAX_*
ROUTE = Kind(
    Header("=BBBBBBBBI", "family dst_len src_len tos table proto scope type flags"),  # rtmsg
    Attrs(
        (1, "RTA_DST", ADDRESS),
        (4, "RTA_OIF", U32),
        (5, "RTA_GATEWAY", ADDRESS),
        (6, "RTA_PRIORITY", U32),
        (7, "RTA_PREFSRC", ADDRESS),
        (8, "RTA_METRICS", Nested(METRICS)),
        (15, "RTA_TABLE", U32),
    ),
)
NEIGH = Kind(
    Header("=BxxxiHBB", "family ifindex state flags ndm_type"),  # ndmsg
    Attrs((1, "NDA_DST", ADDRESS), (2, "NDA_LLADDR", MAC)),
)

KINDS = {
    RTM_NEWLINK: ("RTM_NEWLINK", LINK),
    RTM_DELLINK: ("RTM_DELLINK", LINK),
    RTM_NEWADDR: ("RTM_NEWADDR", ADDR),
    RTM_DELADDR: ("RTM_DELADDR", ADDR),
    codec.RTM_NEWROUTE: ("RTM_NEWROUTE", ROUTE),
    codec.RTM_DELROUTE: ("RTM_DELROUTE", ROUTE),
    codec.RTM_NEWNEIGH: ("RTM_NEWNEIGH", NEIGH),
    codec.RTM_DELNEIGH: ("RTM_DELNEIGH", NEIGH),
}


def decode(msg_type: int, payload: memoryview) -> Message | None:
    """The message of type ``msg_type``, or None for a type pyflannel does not read or a
    payload shorter than its header."""
    found = KINDS.get(msg_type)
    if found is None:
        return None
    event, kind = found
    try:
        msg = kind.decode(payload)
    except struct.error:
        return None
    msg["event"] = event
    return msg
