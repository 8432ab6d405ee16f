"""pyroute2, for the one thing pyflannel asks of it: WireGuard's generic netlink (the kernel
WireGuard backend). Everything else speaks route netlink itself (kernel/iproute.py), so
pyroute2 is an optional extra (``pip install pyflannel[wireguard]``; the Debian package
ships it): imported here only, when kernel WireGuard is configured.

Importing it loads the whole package (its ``__init__`` imports every module the library has,
~160 here, NDB with sqlite3 among them: pyroute2 #1404 asks upstream for a lighter import).
Only a node running kernel WireGuard pays that, once; no other path imports pyroute2, so
nothing is swapped in ``sys.modules`` to avoid it."""

from __future__ import annotations

from pyflannel.errors import BackendError


def wireguard_socket():
    """pyroute2's WireGuard generic netlink socket (only the kernel WireGuard path)."""
    try:
        from pyroute2.netlink.generic.wireguard import WireGuard
    except ImportError as e:
        raise BackendError(
            f"kernel WireGuard needs pyroute2 ({e}): pip install 'pyflannel[wireguard]', or "
            "run WireGuard in userspace (wireguard-go)"
        ) from e
    return WireGuard()
