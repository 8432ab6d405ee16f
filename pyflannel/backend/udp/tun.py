"""The UDP backend's TUN device ``flannel0``: raw IPv4 packets, no packet-info header.

It is made persistent (TUNSETPERSIST), so it, its address and its routes outlive the daemon:
a restart costs only the packets sent while no process holds the device, not a re-setup.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETVNETHDRSZ = 0x400454D8
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
VNET_HDR_LEN = 10

TUN_NAME = "flannel0"

log = logging.getLogger(__name__)


class TunError(OSError):
    pass


def open_tun(
    name: str = TUN_NAME, persist: bool = True, vnet_hdr: bool = False, multi_queue: bool = False
) -> int:
    """Open (creating if needed) TUN device ``name``; return a non-blocking fd. With
    ``vnet_hdr`` every packet read or written starts with a 10-byte virtio-net header. With
    ``multi_queue`` each call attaches one more queue to the device: the kernel spreads the
    packets it routes into the device over the queues by flow.

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
        flags = (
            IFF_TUN
            | IFF_NO_PI
            | (IFF_VNET_HDR if vnet_hdr else 0)
            | (IFF_MULTI_QUEUE if multi_queue else 0)
        )
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


def set_offload(fd: int, flags: int) -> None:
    """What the device may hand us unfinished (TUN_F_*, for the whole device, every queue):
    CSUM - partial transport checksums; TSO4 - TCP super-packets up to 64 KB. 0: nothing, the
    kernel segments and checksums before the TUN. Needs the virtio-net header to be useful,
    and it persists with the device, so a reader without one must clear it."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def remove_tun(name: str = TUN_NAME, multi_queue: bool = False) -> None:
    """Delete a persistent TUN device (clearing TUNSETPERSIST on a fresh fd)."""
    fd = open_tun(name, persist=False, multi_queue=multi_queue)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)


def open_queues(count: int, vnet_hdr: bool, name: str = TUN_NAME) -> tuple[list[int], str | None]:
    """Attach ``count`` queues of the multi-queue device ``name`` (creating it). Returns the
    fds, and why the virtio-net header was refused if it was (then no queue has it).

    A single-queue device of that name (made by upstream flannel or an older pyflannel) cannot
    take more queues: it is deleted and recreated, and the caller re-adds address and routes.
    """
    try:
        first, refused = _attach_first(name, vnet_hdr)
    except TunError as e:
        if e.errno not in (errno.EINVAL, errno.EBUSY):
            raise
        log.warning(
            "%s exists as a single-queue or otherwise different device (%s); recreating it",
            name,
            e.strerror,
        )
        remove_tun(name)  # raises TunError if it is no TUN device at all
        first, refused = _attach_first(name, vnet_hdr)
    fds = [first]
    try:
        for _ in range(count - 1):
            fds.append(open_tun(name, vnet_hdr=vnet_hdr and refused is None, multi_queue=True))
    except TunError:
        for fd in fds:
            os.close(fd)
        raise
    return fds, refused


def _attach_first(name: str, vnet_hdr: bool) -> tuple[int, str | None]:
    if not vnet_hdr:
        return open_tun(name, multi_queue=True), None
    try:
        return open_tun(name, vnet_hdr=True, multi_queue=True), None
    except TunError as e:
        return open_tun(name, multi_queue=True), str(e)  # raises too if the device is the problem
