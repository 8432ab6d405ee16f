"""pyflannel's route-netlink socket for devices, addresses and route lookups: the few calls
the daemon makes, typed for devices (``get_link``, ``add_link``, ``set_link``,
``delete_link``: kernel/links.py) and with pyroute2's names and answers for the rest
(``link_lookup``, ``get_links``, ``get_addr``, ``addr``, ``route``); and the notification
socket the kernel watch reads. Requests are built from the message tables (requests.py,
message.py) and sent through the one request loop (nlsocket.py).

Why not pyroute2 here: importing its ``IPRoute`` took 73 ms of every start here (and ~5 MB;
README, "Why the daemon speaks route netlink itself"), for a dozen message shapes. pyroute2
is an optional extra, for kernel WireGuard's generic netlink only (kernel/rtnl.py).
Not thread-safe: one per thread (the netlink thread owns the daemon's).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial

from pyflannel.kernel import requests
from pyflannel.kernel.codec import RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE
from pyflannel.kernel.links import Link, Vxlan
from pyflannel.kernel.message import Message, decode
from pyflannel.kernel.nlsocket import Answer, NetlinkError, NetlinkSocket

RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400

__all__ = ["IPRoute", "Link", "NetlinkError", "Notifications", "Vxlan"]


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

    def _request(self, build: Callable[[int], bytes]) -> list[Message]:
        """One request; its answers, decoded."""
        return _decoded(self.sock.request(build))

    def _dump(self, kind: int, family: int = 0) -> list[Message]:
        """Every link, address or route of a family: a whole dump (read again if the kernel
        says it was interrupted)."""
        return _decoded(self.sock.dump(lambda seq: requests.dump(seq, kind, family)))

    # -- devices, typed --------------------------------------------------------------------

    def get_link(self, name: str = "", index: int = 0) -> Link | None:
        """The device called ``name`` (or numbered ``index``), or None."""
        try:
            found = self._request(lambda seq: requests.get_link(seq, index, name))
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.EINVAL, errno.ERANGE):  # a name too long: none
                return None
            raise
        return Link.of(found[0]) if found else None

    def add_link(
        self, name: str, kind: str, mac: str = "", mtu: int = 0, vxlan: Vxlan | None = None
    ) -> None:
        """Create device ``name`` of ``kind`` (a VXLAN device with its settings); EEXIST if
        there is one."""
        data = vxlan.data() if vxlan is not None else None
        self._request(lambda seq: requests.new_link(seq, name, kind, mac, mtu, data))

    def set_link(
        self, index: int, mtu: int = 0, up: bool | None = None, txqlen: int | None = None
    ) -> None:
        self._request(lambda seq: requests.set_link(seq, index, mtu, up, txqlen))

    def delete_link(self, index: int) -> None:
        self._request(lambda seq: requests.delete_link(seq, index))

    # -- pyroute2's names ----------------------------------------------------------------

    def link_lookup(self, ifname: str) -> list[int]:
        link = self.get_link(ifname)
        return [link.index] if link is not None else []

    def get_links(self, *indexes: int) -> list[Message]:
        if not indexes:
            return self._dump(RTM_GETLINK)
        return [
            m for index in indexes for m in self._request(partial(requests.get_link, index=index))
        ]

    def get_addr(self, family: int = 0, index: int | None = None) -> list[Message]:
        answers = self._dump(RTM_GETADDR, family)
        return [m for m in answers if index is None or m["index"] == index]

    def addr(self, command: str, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        if command not in ("add", "replace", "del"):
            raise ValueError(f"addr {command!r}: not a command pyflannel sends")
        delete = command == "del"
        self._request(lambda seq: requests.address(seq, index, address, prefixlen, delete, flags))

    def route(self, command: str, dst: str = "", family: int = 0, table: int = 0) -> list[Message]:
        if command == "get":
            return self._request(lambda seq: requests.get_route(seq, dst))
        if command == "dump":
            answers = self._dump(RTM_GETROUTE, family)
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
