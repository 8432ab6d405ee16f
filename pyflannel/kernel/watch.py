"""Notice at once when someone removes what pyflannel owns in the kernel.

Subscribes to netlink link, neighbour, route and address notifications (both families; a
non-blocking socket read from the event loop: works on the stdlib loop and on uvloop) and
calls ``on_damage`` for the deletion of one of our devices, of a route with our protocol
number, of a neighbour or FDB entry on our VXLAN device, or our device going down. The
reconciler then repairs within a fraction of a second instead of at its next periodic pass.
The backend recognises its own deletions, so removing thousands of peers does not set off
thousands of reconciles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from pyflannel.kernel.codec import AF_BRIDGE, AF_INET6, IFF_UP, RTPROT_PYFLANNEL
from pyflannel.kernel.iproute import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    Notifications,
)

log = logging.getLogger(__name__)


Damage = tuple[str, str, str]  # (table, key, description)


@dataclass(frozen=True)
class Watched:
    """What this network owns, as the notifications name it."""

    device_names: frozenset[str]
    device_indexes: frozenset[int]
    underlay: int = 0
    networks: tuple[IPv4Network | IPv6Network, ...] = ()  # route destinations of this network


def is_damage(msg, watched: Watched) -> Damage | None:
    """(table, key, description) of what a netlink notification did to our objects, or None.
    ``table``/``key`` match the reconciler's tables ("route", "neigh", "fdb") so that our
    own deletions can be recognised; devices and the underlay use "device"/"underlay".
    Another network's routes (same protocol number, other CIDR) are not ours."""
    event = msg.get("event")
    device_names, device_indexes = watched.device_names, watched.device_indexes
    if event in ("RTM_NEWADDR", "RTM_DELADDR") and msg.get("index") == watched.underlay:
        what = "added" if event == "RTM_NEWADDR" else "removed"
        return "underlay", "", f"underlay address {msg.get_attr('IFA_ADDRESS')} {what}"
    if event in ("RTM_DELLINK", "RTM_NEWLINK"):
        name = msg.get_attr("IFLA_IFNAME")
        if name not in device_names:
            return None
        if event == "RTM_DELLINK":
            return "device", name, f"device {name} deleted"
        return None if msg["flags"] & IFF_UP else ("device", name, f"device {name} set down")
    if event == "RTM_DELROUTE" and msg.get("proto") == RTPROT_PYFLANNEL:
        unspecified = "::" if msg.get("family") == AF_INET6 else "0.0.0.0"
        dst = f"{msg.get_attr('RTA_DST') or unspecified}/{msg['dst_len']}"
        try:
            net = ip_network(dst)
        except ValueError:  # nonsense
            return None
        dst = str(net)  # the reconciler's spelling of the key
        ours = any(
            net.version == n.version and net.subnet_of(n)  # type: ignore[arg-type]
            for n in watched.networks
        )
        return ("route", dst, f"route {dst} deleted") if ours else None
    if event == "RTM_DELNEIGH" and msg.get("ifindex") in device_indexes:
        if msg.get("family") == AF_BRIDGE:  # an FDB entry
            mac = msg.get_attr("NDA_LLADDR")
            return "fdb", mac, f"FDB entry {mac} deleted"
        ip = str(msg.get_attr("NDA_DST"))
        return "neigh", ip, f"neighbour entry {ip} deleted"
    return None


class KernelWatch:
    def __init__(
        self,
        watched: Callable[[], Watched],
        on_damage: Callable[[Damage], None],
    ):
        self.watched = watched  # what we own now (devices may be recreated)
        self.on_damage = on_damage
        self.sock: Notifications | None = None
        self.noticed = 0

    def start(self) -> None:
        self.sock = Notifications(
            RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_ROUTE
            | RTMGRP_IPV6_IFADDR
        )
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            assert self.sock is not None, "start() first"
            messages = self.sock.get()
        except Exception as e:  # e.g. ENOBUFS after a burst: we may have missed something
            log.debug("kernel notifications: %s; reconciling to be sure", e)
            self.on_damage(("missed", "", f"missed notifications ({e})"))
            return
        watched = self.watched()
        for msg in messages:
            what = is_damage(msg, watched)
            if what:
                self.noticed += 1
                self.on_damage(what)

    def close(self) -> None:
        if self.sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except RuntimeError:
                pass
            self.sock.close()
            self.sock = None
