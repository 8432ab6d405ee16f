"""The pyroute2 names pyflannel uses, imported in the order pyroute2's own ``__init__`` would
import them (its modules import each other in a circle that only that order resolves), without
the rest of the package (pyroute2_lite.py)."""

from __future__ import annotations

from pyflannel.kernel.pyroute2_lite import install

install()  # before the first pyroute2 import: without the package's __init__

import pyroute2.config.log  # noqa: E402, F401 - pyroute2's logger, as its __init__ sets it up
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    ndmsg,
)
from pyroute2.netlink.rtnl.iprsocket import IPRSocket  # noqa: E402

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
