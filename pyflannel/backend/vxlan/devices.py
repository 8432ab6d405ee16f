"""The VXLAN backend's devices (upstream's device.go): ``flannel.<VNI>`` over the underlay's
IPv4 address and, on a dual-stack network, ``flannel-v6.<VNI>`` over its IPv6 one. Found or
created (an existing device is kept when compatible, so its MAC and peers' entries survive a
restart; recreated when not: upstream's ``ensureLink``), repaired when changed behind our
back, given the lease's address, moved with the underlay. Netlink I/O on the netlink thread.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import replace
from typing import Any

from pyflannel.backend import kernel
from pyflannel.backend.mtu import dual_stack_mtu, overlay_mtu
from pyflannel.backend.vxlan.device import (
    VxlanConfig,
    VxlanSpec,
    device_name,
    incompatibilities,
    random_vtep_mac,
)
from pyflannel.backend.vxlan.peer import NAME
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.iproute import IPRoute
from pyflannel.kernel.links import Link
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease

log = logging.getLogger(__name__)


def create_vxlan(ipr: IPRoute, spec: VxlanSpec, mac: str) -> Link:
    ipr.add_link(spec.name, "vxlan", mac=mac, mtu=spec.mtu, vxlan=spec.settings())
    link = ipr.get_link(spec.name)
    if link is None:
        raise OSError(errno.ENODEV, f"{spec.name} vanished right after it was created")
    return link


class VxlanDevices:
    def __init__(
        self,
        netlink: Netlink,
        config: VxlanConfig,
        network: NetworkConfig,
        ext: ExtIface,
        local_any: bool = False,
    ):
        """``local_any`` (--site): no local address, so that the kernel sends from the address
        on the way to each peer (the inside one within a site, the public one to upstream
        nodes at their PublicIP), not from the public IP over the site's private LAN."""
        self.netlink, self.config, self.network = netlink, config, network
        self.local_any = local_any
        self.spec = VxlanSpec(
            name=device_name(config.vni),
            vni=config.vni,
            local=None if local_any else ext.public_ip,
            link_index=ext.index,
            port=config.port,
            learning=config.learning,
            gbp=config.gbp,
            mtu=0,
        )
        self.spec6: VxlanSpec | None = None  # dual-stack: flannel-v6.<VNI>
        self.device: Link | None = None
        self.device6: Link | None = None
        self.mtu = 0  # the pods'
        self.ext = ext
        self.set_underlay(ext)

    def set_underlay(self, ext: ExtIface) -> None:
        """Device specs and MTUs for an underlay. The IPv4 device carries iface - 50; the
        IPv6 one iface - 70 (a 40-byte outer header); pods get one MTU that fits both."""
        self.ext = ext
        link_mtu = self.config.mtu or ext.mtu
        mtu4 = overlay_mtu(NAME, link_mtu)
        local = None if self.local_any else ext.public_ip
        self.spec = replace(self.spec, local=local, link_index=ext.index, mtu=mtu4)
        self.mtu = mtu4
        if self.network.enable_ipv6:
            if ext.iface_addr6 is None:
                raise BackendError(f"EnableIPv6 is set but {ext.name} has no IPv6 address")
            self.mtu = dual_stack_mtu(NAME, link_mtu)
            link_mtu6 = self.config.mtu or ext.v6_mtu
            self.mtu = min(self.mtu, dual_stack_mtu(NAME, link_mtu6))
            self.spec6 = replace(
                self.spec,
                name=device_name(self.config.vni, ipv6=True),
                local=ext.iface_addr6,
                link_index=ext.v6_index,
                mtu=overlay_mtu(NAME, link_mtu6, ipv6_underlay=True),
            )

    @property
    def mtu_reason(self) -> str:
        source = "Backend.MTU" if self.config.mtu else f"{self.ext.name} MTU"
        if self.spec6 is not None:
            return (
                f"{self.config.mtu or self.ext.mtu} ({source}) - 70 (VXLAN over the IPv6 "
                "underlay; over IPv4 it is 50): one pod MTU that fits both families"
            )
        return f"{self.config.mtu or self.ext.mtu} ({source}) - 50 (VXLAN overhead)"

    @property
    def link(self) -> Link:
        """The IPv4 device (after ``prepare``)."""
        assert self.device is not None, "prepare() first"
        return self.device

    def names(self) -> tuple[str, ...]:
        return (self.spec.name,) + ((self.spec6.name,) if self.spec6 is not None else ())

    async def prepare(self) -> None:
        self.device = await self._ensure(self.spec, mac=None)
        if self.spec6 is not None:
            self.device6 = await self._ensure(self.spec6, mac=None)

    async def move(self, ext: ExtIface) -> None:
        """Onto a new underlay, keeping each device's MAC (peers need only a new FDB
        destination)."""
        self.set_underlay(ext)
        self.device = await self._ensure(self.spec, mac=self.link.mac)
        if self.spec6 is not None:
            mac6 = self.device6.mac if self.device6 else None
            self.device6 = await self._ensure(self.spec6, mac=mac6)

    async def repair(self) -> list[str]:
        """Recreate a device deleted or changed behind our back (same MAC); what was done."""
        repaired = []
        self.device, what = await self._repaired(self.spec, self.link)
        repaired += [what] if what else []
        if self.spec6 is not None and self.device6 is not None:
            self.device6, what = await self._repaired(self.spec6, self.device6)
            repaired += [what] if what else []
        return repaired

    async def _repaired(self, spec: VxlanSpec, had: Link) -> tuple[Link, str]:
        link = await self.netlink.call(IPRoute.get_link, spec.name)
        if link is not None and not incompatibilities(link, spec) and link.mac == had.mac:
            return link, ""
        what = "was deleted" if link is None else "was changed"
        return await self._ensure(spec, mac=had.mac), f"device {spec.name} {what}; recreated"

    async def _ensure(self, spec: VxlanSpec, mac: str | None) -> Link:
        link = await self.netlink.call(IPRoute.get_link, spec.name)
        if link is not None:
            reasons = incompatibilities(link, spec)
            if not reasons:
                log.info("keeping existing device %s (VTEP MAC %s)", link.name, link.mac)
                return link
            log.warning("recreating %s: existing device has %s", link.name, ", ".join(reasons))
            await self.netlink.call(kernel.delete_link, link.index)
        try:
            link = await self.netlink.call(create_vxlan, spec, mac or random_vtep_mac())
        except Exception as e:
            raise BackendError(
                f"cannot create VXLAN device {spec.name} (VNI {spec.vni}, "
                f"port {spec.effective_port}, via {self.ext.name}): {kernel.describe_error(e)}"
            ) from e
        log.info(
            "created %s: VNI %d, local %s, port %d, MTU %d, VTEP MAC %s",
            link.name,
            spec.vni,
            spec.local,
            spec.effective_port,
            spec.mtu,
            link.mac,
        )
        return link

    async def configure(self, lease: Lease, loose_reverse_path: bool) -> list[str]:
        """The lease's address on each device: ``<subnet>.0/32`` on flannel.<VNI>, and
        ``<IPv6 subnet>::/128`` on flannel-v6.<VNI>; what changed."""
        changed = await self.netlink.call(
            kernel.configure_device,
            self.link.index,
            self.link.name,
            lease.subnet.network_address,
            self.network.cidr,
            self.spec.mtu,
        )
        if loose_reverse_path:  # a peer may come in over either encapsulation
            kernel.loose_reverse_path(self.link.name)
        cidr6 = self.network.cidr6
        if self.device6 is not None and self.spec6 is not None and cidr6 is not None:
            if lease.ipv6_subnet is None:
                raise BackendError(f"the lease {lease.key} has no IPv6 subnet")
            changed += await self.netlink.call(
                kernel.configure_device,
                self.device6.index,
                self.device6.name,
                lease.ipv6_subnet.network_address,
                cidr6,
                self.spec6.mtu,
            )
        return changed

    def backend_data(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The lease's BackendData and (dual-stack) BackendV6Data."""
        data: dict[str, Any] = {"VNI": self.spec.vni, "VtepMAC": self.link.mac}
        v6 = {"VNI": self.spec.vni, "VtepMAC": self.device6.mac} if self.device6 else None
        return data, v6

    def status_details(self) -> dict[str, Any]:
        details = {
            "port": self.spec.effective_port,
            "vni": self.spec.vni,
            "vtep_mac": self.device.mac if self.device else None,
        }
        if self.spec6 is not None:
            details.update(
                device6=self.spec6.name, vtep_mac6=self.device6.mac if self.device6 else None
            )
        return details
