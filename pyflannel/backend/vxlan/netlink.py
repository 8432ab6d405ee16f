"""The VXLAN device's own netlink I/O: reading a link as the VXLAN backend needs it, and
creating one. Runs on the netlink thread (pyflannel.kernel.netlink), like backend/kernel.py."""

from __future__ import annotations

import errno

from pyflannel.backend.vxlan.device import VxlanSpec
from pyflannel.kernel.iproute import IPRoute
from pyflannel.kernel.links import Link


def find_link(ipr: IPRoute, name: str) -> Link | None:
    return ipr.get_link(name)


def create_vxlan(ipr: IPRoute, spec: VxlanSpec, mac: str) -> Link:
    ipr.add_link(spec.name, "vxlan", mac=mac, mtu=spec.mtu, vxlan=spec.settings())
    link = ipr.get_link(spec.name)
    if link is None:
        raise OSError(errno.ENODEV, f"{spec.name} vanished right after it was created")
    return link
