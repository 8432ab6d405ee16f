"""The pyroute2 names pyflannel uses, imported in the order pyroute2's own ``__init__`` would
import them (its modules import each other in a circle that only that order resolves), without
the rest of the package (pyroute2_lite.py)."""

from __future__ import annotations

import pyroute2.config.log  # noqa: F401 - pyroute2's logger, as its __init__ sets it up
from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    ndmsg,
)
from pyroute2.netlink.rtnl.iprsocket import IPRSocket

__all__ = [
    "RTMGRP_IPV4_IFADDR",
    "RTMGRP_IPV4_ROUTE",
    "RTMGRP_IPV6_IFADDR",
    "RTMGRP_IPV6_ROUTE",
    "RTMGRP_LINK",
    "RTMGRP_NEIGH",
    "IPRSocket",
    "IPRoute",
    "NetlinkError",
    "ndmsg",
    "wireguard_socket",
]


def wireguard_socket():
    """pyroute2's WireGuard generic netlink socket (only the kernel WireGuard path)."""
    from pyroute2.netlink.generic.wireguard import WireGuard

    return WireGuard()
