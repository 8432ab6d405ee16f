"""Applying and keeping the iptables rules (iptables-restore / iptables -S as subprocesses).

Applied in one ``iptables-restore --noflush`` transaction per table; every ``--iptables-resync``
seconds one ``iptables -S`` per table checks them, and any drift (a flushed chain, a deleted
jump, a rule someone added to our chain) rebuilds this network's rules. Another network's
daemon on the same host shares upstream's chains; its rules are never touched (see
``iptables_rules.claim``).
"""

from __future__ import annotations

import logging
import shutil

from pyflannel.kernel.nft_watch import NFPROTO
from pyflannel.traffic.base import TrafficError, TrafficManager, run_tool
from pyflannel.traffic.iptables_rules import (
    RANDOM_FULLY_SINCE,
    Rule,
    cleanup_payload,
    drift,
    forward_rules,
    masquerade_rules,
    mss_rules,
    parse_version,
    restore_payload,
    site_chain,
    site_port_rules,
    strangers_counted,
    vxlan_peer_rules,
)
from pyflannel.traffic.ownership import Cluster

log = logging.getLogger(__name__)


_run = run_tool  # iptables and iptables-restore


class IptablesRules(TrafficManager):
    mode = "iptables"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peer_ips: list[str] = []
        self.site_members: list[str] | None = None  # None: not known yet (nothing counted)
        self.clamps: dict[Cluster, int] = {}  # peer subnet -> MSS (ops/mesh/mtu_fixer.py)
        self._counted = 0  # the strangers' rule's count when last read (reset by a restore)
        self.rules: list[Rule] = []
        self.version: tuple[int, ...] = (0, 0, 0)

    @property
    def tool(self) -> str:
        """iptables, or ip6tables for the IPv6 rules of a dual-stack network."""
        return tool_for(self.family)

    async def setup(self, cluster: Cluster, pod: Cluster) -> None:
        """Install the rules for this network and subnet (again, after the subnet changed)."""
        if not self.enabled:
            return
        if shutil.which(f"{self.tool}-restore") is None:
            raise TrafficError(
                f"{self.tool}-restore not found: install iptables, or run without "
                "--ip-masq and with --iptables-forward-rules=false"
            )
        if self.version == (0, 0, 0):
            self.version = parse_version(await _run(self.tool, "--version"))
        self._network = (cluster, pod)
        self.rules = self._build()
        await self._restore(if_drifted=True)
        what = [
            name
            for name, on in (
                ("masquerade", self.masquerade),
                ("forward", self.forward),
                ("vxlan peer filter", self.peer_filter_port is not None),
                ("site link strangers counted", self.site_port is not None),
            )
            if on
        ]
        log.info("%s rules in place: %s", self.tool, ", ".join(what))

    def _build(self) -> list[Rule]:
        cluster, pod = self.network
        random_fully = self.version >= RANDOM_FULLY_SINCE and not self.random_fully_disabled
        rules = []
        if self.masquerade:
            rules += masquerade_rules(cluster, pod, random_fully)
        if self.forward:
            rules += forward_rules(cluster)
        if self.peer_filter_port is not None:
            rules += vxlan_peer_rules(self.peer_filter_port, self.peer_ips)
        if self.site_port is not None and self.site_members is not None:
            rules += site_port_rules(self.site_port, self.site_members)
        if self.clamps:
            rules += mss_rules(self.clamps)
        return rules

    def tables(self) -> set[tuple[int, str]]:
        """iptables-nft keeps ``-t nat`` and ``-t filter`` as nf_tables tables of those names,
        family ip (ip6 for ip6tables)."""
        family = NFPROTO["ip6" if self.family == 6 else "ip"]
        return {(family, rule.table) for rule in self.rules}

    async def set_peers(self, public_ips: list[str]) -> None:
        """The VXLAN peer filter follows the peer set."""
        ips = _in_order(public_ips)
        if self.peer_filter_port is None or ips == self.peer_ips:
            return
        self.peer_ips = ips
        await self._rebuild()

    async def set_site_members(self, addresses: list[str]) -> None:
        """The site port's chain follows the network's nodes' addresses."""
        ips = _in_order(addresses)
        if self.site_port is None or ips == self.site_members:
            return
        self.site_members = ips
        await self._rebuild()

    async def set_clamps(self, clamps: dict[Cluster, int]) -> None:
        """The MSS clamps follow the paths fixed; the last one gone, this network's lines
        leave the shared chain (and the chain, if no other network has one there)."""
        if clamps == self.clamps:
            return
        if self._network is None:
            raise TrafficError("traffic rules are off (--iptables-forward-rules=false)")
        had, self.clamps = self.clamps, dict(clamps)
        await self._rebuild()
        if had and not clamps:
            listed = (await _run(self.tool, "-w", "-t", "mangle", "-S")).splitlines()
            payload = cleanup_payload("mangle", listed, self.network[0])
            if payload is not None:
                await _run(f"{self.tool}-restore", "--noflush", "--wait", stdin=payload)

    async def _rebuild(self) -> None:
        if self._network is not None:
            await self.count_strangers()  # before the site port's chain is written anew
            self.rules = self._build()
            await self._restore()

    async def count_strangers(self) -> None:
        """Add what the strangers' rule counted since the last read (a restore starts it at
        zero again; the total stays)."""
        if self.site_port is None or self._network is None:
            return
        try:
            listed = await _run(
                self.tool, "-w", "-t", "filter", "-S", site_chain(self.site_port), "-v"
            )
        except TrafficError:
            return  # the chain is gone: drift, repaired by the check
        counted = strangers_counted(listed)
        if counted is None:
            return
        grown = counted - self._counted if counted >= self._counted else counted
        self.strangers = (self.strangers or 0) + grown
        self._counted = counted

    async def _listing(self) -> dict[str, list[str]]:
        return {
            table: (await _run(self.tool, "-w", "-t", table, "-S")).splitlines()
            for table in sorted({r.table for r in self.rules})
        }

    async def _restore(self, if_drifted: bool = False) -> None:
        listed = await self._listing()
        if if_drifted and not self._drift(listed):
            return  # e.g. a restart: the rules are already as they should be
        wait = ["--wait"] if self.version >= (1, 6, 2) else []
        for table in sorted({r.table for r in self.rules}):
            await _run(
                f"{self.tool}-restore",
                "--noflush",
                *wait,
                stdin=restore_payload(table, self.rules, listed[table], self.network[0]),
            )
        self.restores += 1
        self._counted = 0  # the site port's chain was written anew

    async def check(self) -> list[str]:
        """Drift between the rules and the kernel; repaired if there is any."""
        if not self.rules:
            return []
        await self.count_strangers()  # before a repair starts the count again
        problems = self._drift(await self._listing())
        if problems:
            log.warning("%s rules drifted (%s); restoring them", self.tool, "; ".join(problems[:3]))
            await self._restore()
        self.last_problem = "; ".join(problems)
        return problems

    async def present(self) -> bool:
        """Are all rules in place (for status and readiness)?"""
        return not self.rules or not self._drift(await self._listing())

    def _drift(self, listed: dict[str, list[str]]) -> list[str]:
        return drift(self.rules, listed, self.network[0])


def _in_order(ips: list[str]) -> list[str]:
    return sorted(set(ips), key=lambda ip: tuple(int(x) for x in ip.split(".")))


def tool_for(family: int) -> str:
    return "ip6tables" if family == 6 else "iptables"


async def remove_rules(cluster: Cluster) -> bool:
    """Remove this network's rules from upstream's iptables chains (ip6tables for an IPv6
    network); True if there were any."""
    tool = tool_for(cluster.version)
    if shutil.which(f"{tool}-restore") is None:
        return False
    removed = False
    for table in ("nat", "filter", "mangle"):
        listed = (await _run(tool, "-w", "-t", table, "-S")).splitlines()
        payload = cleanup_payload(table, listed, cluster)
        if payload is not None:
            await _run(f"{tool}-restore", "--noflush", "--wait", stdin=payload)
            removed = True
    return removed
