"""pyroute2, for the one thing pyflannel still asks of it: WireGuard's generic netlink (the
kernel WireGuard backend). Everything else speaks route netlink itself (kernel/iproute.py).
Imported only by that backend, and without the rest of the package (pyroute2_lite.py)."""

from __future__ import annotations

from pyflannel.kernel.pyroute2_lite import install

install()  # before the first pyroute2 import: without the package's __init__

import pyroute2.config.log  # noqa: E402, F401 - pyroute2's logger, as its __init__ sets it up


def wireguard_socket():
    """pyroute2's WireGuard generic netlink socket (only the kernel WireGuard path)."""
    from pyroute2.netlink.generic.wireguard import WireGuard

    return WireGuard()
