"""One network's traffic rules for every family it carries: IPv4 (iptables, or nftables'
``ip flannel-ipv4``) and, on a dual-stack network, IPv6 (ip6tables, or ``ip6 flannel-ipv6``),
each kept by a manager of its own. The daemon and its status see one object."""

from __future__ import annotations

import asyncio
from typing import Any

from pyflannel.traffic.base import TrafficManager
from pyflannel.traffic.ownership import Cluster


class NetworkRules:
    def __init__(self, managers: list[TrafficManager]):
        assert managers and managers[0].family == 4, "the IPv4 manager first"
        self.managers = managers

    @property
    def v4(self) -> TrafficManager:
        return self.managers[0]

    @property
    def mode(self) -> str:
        return self.v4.mode

    @property
    def enabled(self) -> bool:
        return self.v4.enabled

    @property
    def masquerade(self) -> bool:
        return self.v4.masquerade

    @property
    def forward(self) -> bool:
        return self.v4.forward

    @property
    def vxlan_port(self) -> int | None:
        return self.v4.vxlan_port

    @vxlan_port.setter
    def vxlan_port(self, port: int | None) -> None:
        """The VXLAN peer filter (iptables, IPv4 underlay only)."""
        self.v4.vxlan_port = port

    @property
    def rules(self) -> list[Any]:
        return [rule for m in self.managers for rule in m.rules]

    @property
    def restores(self) -> int:
        return sum(m.restores for m in self.managers)

    @property
    def last_problem(self) -> str:
        return "; ".join(m.last_problem for m in self.managers if m.last_problem)

    async def setup(self, networks: list[tuple[Cluster, Cluster]]) -> None:
        """(cluster, pod subnet) per family, in the managers' order; a family the lease has
        no subnet of gets no rules."""
        for manager, (cluster, pod) in zip(self.managers, networks, strict=False):
            await manager.setup(cluster, pod)

    async def check(self) -> list[str]:
        return [problem for m in self.managers for problem in await m.check()]

    async def present(self) -> bool:
        return all([await m.present() for m in self.managers])

    async def set_peers(self, public_ips: list[str]) -> None:
        await self.v4.set_peers(public_ips)

    async def resync_forever(self, interval: float) -> None:
        await asyncio.gather(*(m.resync_forever(interval) for m in self.managers))
