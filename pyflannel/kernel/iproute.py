"""pyflannel's route-netlink socket for devices, addresses and route lookups: the few calls the
daemon makes, with pyroute2's ``IPRoute`` names and answers (``link_lookup``, ``get_links``,
``link``, ``get_addr``, ``addr``, ``route``) so a backend reads the same either way; and the
notification socket the kernel watch reads.

Why not pyroute2 here: importing its ``IPRoute`` took 73 ms of every start here (and ~5 MB;
README, "Why the daemon speaks route netlink itself"), for a dozen message shapes that
``struct`` encodes (device_codec.py) and decodes (message.py). pyroute2 stays only for
WireGuard's generic netlink (kernel/rtnl.py).
Not thread-safe: one per thread (the netlink thread owns the daemon's).
"""

from __future__ import annotations

import errno
from typing import Any

from pyflannel.kernel import codec, device_codec
from pyflannel.kernel.message import RTM_GETADDR, RTM_GETLINK, Message, decode
from pyflannel.kernel.nlsocket import Answer, NetlinkError, NetlinkSocket

RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400


class IPRoute:
    def __init__(self, sock: NetlinkSocket | None = None) -> None:
        """On ``sock`` (the netlink thread's one socket), else on a socket of its own."""
        self._owned = sock is None
        self.sock = sock or NetlinkSocket(rcvbuf=1 << 20)

    def close(self) -> None:
        if self._owned:
            self.sock.close()

    def __enter__(self) -> IPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the exchange ------------------------------------------------------------------

    def _request(self, build: Any, *args: Any, **kwargs: Any) -> list[Message]:
        """One request; its answers, decoded."""
        return _decoded(self.sock.request(lambda seq: build(seq, *args, **kwargs)))

    def _dump(self, kind: int, family: int = 0) -> list[Message]:
        """Every link, address or route of a family: a whole dump (read again if the kernel
        says it was interrupted)."""
        return _decoded(self.sock.dump(lambda seq: device_codec.dump(seq, kind, family=family)))

    # -- pyroute2's names ----------------------------------------------------------------

    def link_lookup(self, ifname: str) -> list[int]:
        try:
            return [msg["index"] for msg in self._request(device_codec.get_link, name=ifname)]
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.EINVAL, errno.ERANGE):  # a name too long: none
                return []
            raise

    def get_links(self, *indexes: int) -> list[Message]:
        if not indexes:
            return self._dump(RTM_GETLINK)
        return [m for index in indexes for m in self._request(device_codec.get_link, index)]

    def link(self, command: str, index: int = 0, **attrs: Any) -> None:
        if command == "add":
            data = b""
            if attrs["kind"] == "vxlan":
                data = device_codec.vxlan_data(
                    vni=attrs["vxlan_id"],
                    local=attrs.get("vxlan_local6") or attrs["vxlan_local"],
                    link=attrs.get("vxlan_link", 0),
                    learning=bool(attrs.get("vxlan_learning", 0)),
                    port=attrs.get("vxlan_port", 0),
                    gbp=bool(attrs.get("vxlan_gbp")),
                )
            self._request(
                device_codec.new_link,
                attrs["ifname"],
                attrs["kind"],
                mac=attrs.get("address", ""),
                mtu=attrs.get("mtu", 0),
                data=data,
            )
        elif command == "set":
            state = attrs.get("state")
            self._request(
                device_codec.set_link,
                index,
                mtu=attrs.get("mtu", 0),
                up=None if state is None else state == "up",
                txqlen=attrs.get("txqlen"),
            )
        elif command == "del":
            self._request(device_codec.delete_link, index)
        else:
            raise ValueError(f"link {command!r}: not a command pyflannel sends")

    def get_addr(self, family: int = 0, index: int | None = None) -> list[Message]:
        answers = self._dump(RTM_GETADDR, family)
        return [m for m in answers if index is None or m["index"] == index]

    def addr(self, command: str, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        if command not in ("add", "replace", "del"):
            raise ValueError(f"addr {command!r}: not a command pyflannel sends")
        self._request(device_codec.address, index, address, prefixlen, command == "del", flags)

    def route(self, command: str, dst: str = "", family: int = 0, table: int = 0) -> list[Message]:
        if command == "get":
            return self._request(device_codec.get_route, dst)
        if command == "dump":
            answers = self._dump(codec.RTM_GETROUTE, family)
            return [m for m in answers if not table or _table(m) == table]
        raise ValueError(f"route {command!r}: not a command pyflannel sends")


def _table(msg: Message) -> int:
    return msg.get_attr("RTA_TABLE") or msg["table"]


def _decoded(answers: list[Answer]) -> list[Message]:
    return [m for kind, _, payload in answers if (m := decode(kind, payload)) is not None]


class Notifications:
    """A non-blocking socket in the given multicast groups (the kernel watch's)."""

    BATCH = NetlinkSocket.BATCH  # datagrams per ``get``

    def __init__(self, groups: int):
        self.sock = NetlinkSocket(groups=groups, rcvbuf=1 << 20, nonblocking=True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def get(self) -> list[Message]:
        """The notifications waiting (a batch; the socket stays readable for the rest).
        ENOBUFS, when the kernel dropped some, is raised."""
        return [m for kind, payload in self.sock.notifications() if (m := decode(kind, payload))]

    def close(self) -> None:
        self.sock.close()
