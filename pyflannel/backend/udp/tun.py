"""The UDP backend's TUN device ``flannel0``: raw IPv4 packets, no packet-info header.

It is made persistent (TUNSETPERSIST), so it, its address and its routes outlive the daemon:
a restart costs only the packets sent while no process holds the device, not a re-setup.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETVNETHDRSZ = 0x400454D8
VNET_HDR_LEN = 10

TUN_NAME = "flannel0"


class TunError(OSError):
    pass


def open_tun(name: str = TUN_NAME, persist: bool = True, vnet_hdr: bool = False) -> int:
    """Open (creating if needed) TUN device ``name``; return a non-blocking fd. With
    ``vnet_hdr`` every packet read or written starts with a 10-byte virtio-net header.

    A leftover device of another kind or with other flags (EINVAL/EBUSY) is reported, not
    silently replaced: the caller decides.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise TunError(
            e.errno, f"cannot open /dev/net/tun: {e.strerror} (is the tun module loaded?)"
        ) from None
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        os.close(fd)
        hint = (
            " (a device of that name exists with other settings)"
            if e.errno in (errno.EINVAL, errno.EBUSY)
            else ""
        )
        raise TunError(e.errno, f"cannot attach TUN device {name}: {e.strerror}{hint}") from None
    return fd


def remove_tun(name: str = TUN_NAME) -> None:
    """Delete a persistent TUN device (clearing TUNSETPERSIST on a fresh fd)."""
    fd = open_tun(name, persist=False)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)
