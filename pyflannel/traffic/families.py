"""One network's traffic rules for every family it carries: IPv4 (iptables, or nftables'
``ip flannel-ipv4``) and, on a dual-stack network, IPv6 (ip6tables, or ``ip6 flannel-ipv6``),
each kept by a manager of its own. The daemon and its status see one object."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyflannel.traffic import iptables, nftables
from pyflannel.traffic.base import TrafficError, TrafficManager
from pyflannel.traffic.ownership import Cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrafficSettings:
    """The node's rule options: --ip-masq, --iptables-forward-rules,
    --ip-masq-fully-random-disable."""

    masquerade: bool = False
    forward: bool = True
    random_fully_disabled: bool = False


@dataclass(frozen=True)
class RulesFor:
    """What a network's rules are made for: its mode (EnableNFTables), its families, and
    what its backend decides: no forward rules for a backend without a data plane unless the
    flag was given (None: as the flag says), the port only peers may send to
    (--vxlan-peer-filter: iptables, IPv4 underlay only), the site link's port (--site: its
    strangers counted, iptables)."""

    nftables: bool = False
    dual_stack: bool = False
    forward: bool | None = None
    peer_filter_port: int | None = None
    site_port: int | None = None


def network_rules(settings: TrafficSettings, made_for: RulesFor = RulesFor()) -> NetworkRules:
    """A network's rules: iptables or nftables (EnableNFTables), IPv4 and, on a dual-stack
    network, IPv6."""
    kind: type[TrafficManager] = (
        nftables.NftablesRules if made_for.nftables else iptables.IptablesRules
    )
    forward = settings.forward if made_for.forward is None else made_for.forward
    return NetworkRules(
        [
            kind(
                masquerade=settings.masquerade,
                forward=forward,
                random_fully_disabled=settings.random_fully_disabled,
                peer_filter_port=made_for.peer_filter_port if family == 4 else None,
                family=family,
                site_port=made_for.site_port if family == 4 else None,
            )
            for family in ((4, 6) if made_for.dual_stack else (4,))
        ]
    )


async def remove_other_mode(mode: str, cluster: Cluster) -> None:
    """Take this network's rules out of the mode not in use (upstream cleans both ways), so a
    node moved from iptables to nftables, or back, keeps no stale rules. Quiet if the other
    tool is not installed (then it cannot have rules either)."""
    other = iptables.remove_rules if mode == "nftables" else nftables.remove_rules
    try:
        if await other(cluster):
            log.info(
                "removed this network's %s rules (this node uses %s)",
                "iptables" if mode == "nftables" else "nftables",
                mode,
            )
    except TrafficError as e:
        log.warning("could not clean up the other traffic-rules mode: %s", e)


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
    def peer_filter_port(self) -> int | None:
        return self.v4.peer_filter_port

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

    async def set_site_members(self, addresses: list[str]) -> None:
        await self.v4.set_site_members(addresses)

    async def set_clamps(self, clamps: dict[Cluster, int]) -> None:
        """Each family's clamps to its own manager (a dual-stack network's IPv6 subnets to
        ip6tables or ``ip6 flannel-ipv6``)."""
        for m in self.managers:
            await m.set_clamps({s: mss for s, mss in clamps.items() if s.version == m.family})

    @property
    def strangers(self) -> int | None:
        """Datagrams to the site link's port from no member's address (None: not counted)."""
        return self.v4.strangers

    def tables(self) -> set[tuple[int, str]]:
        return {table for m in self.managers for table in m.tables()}
