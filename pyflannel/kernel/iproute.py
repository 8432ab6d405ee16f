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
import os
import socket
from typing import Any

from pyflannel.kernel import codec, device_codec
from pyflannel.kernel.message import RTM_GETADDR, RTM_GETLINK, Message, decode

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLM_F_MULTI, NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x2, 0x100, 0x200
NLMSGERR_ATTR_MSG = 1

RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400


class NetlinkError(OSError):
    """The kernel refused a request: ``code`` is the errno, ``args[1]`` the kernel's own
    explanation when it gave one (extended ack), else the errno's text."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(code, message or os.strerror(code))
        self.code = code


def _error(payload: memoryview, flags: int) -> NetlinkError | None:
    code = codec.error_code(payload)
    if not code:
        return None
    text = ""
    if flags & NLM_F_ACK_TLVS:  # after the error and the request (its header, if capped)
        echoed = codec.NLMSG_HDR.size
        if not flags & NLM_F_CAPPED:  # a kernel that would not cap: the whole request
            echoed = max(echoed, codec.NLMSG_HDR.unpack_from(payload, 4)[0])
        tlvs = codec.attributes(payload, 4 + ((echoed + 3) & ~3))
        if NLMSGERR_ATTR_MSG in tlvs:
            text = bytes(tlvs[NLMSGERR_ATTR_MSG]).split(b"\0", 1)[0].decode(errors="replace")
    return NetlinkError(code, text)


class IPRoute:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                pass  # an old kernel: errors without the kernel's sentence
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the exchange ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _request(self, build: Any, *args: Any, **kwargs: Any) -> list[Message]:
        """Send one request; its answers (decoded) until its ack, done, or error."""
        seq = self._next_seq()
        self.sock.send(build(seq, *args, **kwargs))
        answers: list[Message] = []
        while True:
            for kind, flags, msg_seq, payload in codec.messages(self.sock.recv(1 << 20)):
                if msg_seq != seq:
                    continue  # a late answer to an earlier request
                if kind == codec.NLMSG_DONE:
                    return answers
                if kind == codec.NLMSG_ERROR:
                    error = _error(payload, flags)
                    if error is not None:
                        raise error
                    return answers
                msg = decode(kind, payload)
                if msg is not None:
                    answers.append(msg)
                if not flags & NLM_F_MULTI:  # a single answer: no DONE follows
                    return answers

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
            return self._request(device_codec.dump, RTM_GETLINK)
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
        answers = self._request(device_codec.dump, RTM_GETADDR, family=family)
        return [m for m in answers if index is None or m["index"] == index]

    def addr(self, command: str, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        if command not in ("add", "replace", "del"):
            raise ValueError(f"addr {command!r}: not a command pyflannel sends")
        self._request(device_codec.address, index, address, prefixlen, command == "del", flags)

    def route(self, command: str, dst: str = "", family: int = 0, table: int = 0) -> list[Message]:
        if command == "get":
            return self._request(device_codec.get_route, dst)
        if command == "dump":
            answers = self._request(device_codec.dump, codec.RTM_GETROUTE, family=family)
            return [m for m in answers if not table or _table(m) == table]
        raise ValueError(f"route {command!r}: not a command pyflannel sends")


def _table(msg: Message) -> int:
    return msg.get_attr("RTA_TABLE") or msg["table"]


class Notifications:
    """Route-netlink notifications of the groups given, read without blocking."""

    def __init__(self, groups: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        self.sock.bind((0, groups))

    def fileno(self) -> int:
        return self.sock.fileno()

    BATCH = 64  # datagrams per read: a burst of thousands does not hold the event loop

    def get(self) -> list[Message]:
        """The notifications waiting, up to BATCH datagrams of them (the socket stays readable
        for the rest). ENOBUFS, when the kernel dropped some, is raised."""
        found: list[Message] = []
        for _ in range(self.BATCH):
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            for kind, _, _, payload in codec.messages(data):
                msg = decode(kind, payload)
                if msg is not None:
                    found.append(msg)
        return found

    def close(self) -> None:
        self.sock.close()
