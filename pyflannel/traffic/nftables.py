"""Applying and keeping upstream's nftables rules (``EnableNFTables``) with the ``nft`` tool.

Each change is one ``nft -f`` transaction (all or nothing); every --iptables-resync seconds one
``nft -a list table`` checks the rules, and drift (a deleted chain, a flushed ruleset, a rule
of ours deleted or added) is repaired and logged. What is in the table of another network's
daemon, and every other table (kube-proxy's, a host firewall's), is never touched.
"""

from __future__ import annotations

import logging
import shutil

from pyflannel.kernel.nft_watch import NFPROTO
from pyflannel.traffic import nftables_rules as nft
from pyflannel.traffic.base import TrafficError, TrafficManager, run_tool
from pyflannel.traffic.ownership import Cluster

log = logging.getLogger(__name__)

_FULLY_RANDOM_CHECK = (
    "add table ip pyflannel-check\n"
    "add chain ip pyflannel-check c { type nat hook postrouting priority srcnat ; }\n"
    "add rule ip pyflannel-check c ip saddr != 127.0.0.1 masquerade fully-random\n"
)


async def _listing(cluster: Cluster) -> nft.Listing:
    try:
        text = await run_tool("nft", "-a", "list", "table", *nft.table_of(cluster))
    except TrafficError as e:
        if "No such file or directory" in str(e) or "does not exist" in str(e):
            return nft.Listing()  # no table: everything is missing
        raise
    return nft.parse_listing(text)


class NftablesRules(TrafficManager):
    mode = "nftables"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rules: list[nft.NftRule] = []
        self.clamps: dict[Cluster, int] = {}  # peer subnet -> MSS (ops/mesh/mtu_fixer.py)
        self.fully_random: bool | None = None  # what the kernel accepts, asked once
        if self.peer_filter_port is not None:
            log.warning("--vxlan-peer-filter is an iptables rule set: not applied in nftables mode")
            self.peer_filter_port = None
        if self.site_port is not None:
            log.info(
                "site link: datagrams from strangers are counted in iptables mode only "
                "(WireGuard drops them either way)"
            )
            self.site_port = None

    async def setup(self, cluster: Cluster, pod: Cluster) -> None:
        if not self.enabled:
            return
        if shutil.which("nft") is None:
            raise TrafficError(
                "nft not found: EnableNFTables needs the nftables package (apt install "
                "nftables), or run without --ip-masq and with --iptables-forward-rules=false"
            )
        if self.fully_random is None:
            self.fully_random = not self.random_fully_disabled and await _accepts_fully_random()
        self._network = (cluster, pod)
        self.rules = self._build()
        listing = await _listing(cluster)
        if nft.drift(self.rules, listing, cluster):  # a restart with all in place: nothing
            await self._apply(listing)
        what = [n for n, on in (("masquerade", self.masquerade), ("forward", self.forward)) if on]
        log.info(
            "nftables rules in place (table %s): %s",
            " ".join(nft.table_of(cluster)),
            ", ".join(what),
        )

    def _build(self) -> list[nft.NftRule]:
        cluster, pod = self.network
        rules = []
        if self.forward:
            rules += nft.forward_rules(cluster)
        if self.masquerade:
            rules += nft.masquerade_rules(cluster, pod, bool(self.fully_random))
        return rules + nft.mss_rules(self.clamps)

    async def set_clamps(self, clamps: dict[Cluster, int]) -> None:
        """The MSS clamps follow the paths fixed (this network's lines in the ``mss`` chain;
        the last one gone, the lines go: nft.transaction deletes them)."""
        if clamps == self.clamps:
            return
        if self._network is None:
            raise TrafficError("traffic rules are off (--iptables-forward-rules=false)")
        self.clamps = dict(clamps)
        self.rules = self._build()
        await self._apply(await _listing(self.network[0]))

    async def _apply(self, listing: nft.Listing) -> None:
        await run_tool(
            "nft", "-f", "-", stdin=nft.transaction(self.rules, listing, self.network[0])
        )
        self.restores += 1

    async def check(self) -> list[str]:
        if not self.rules:
            return []
        listing = await _listing(self.network[0])
        problems = nft.drift(self.rules, listing, self.network[0])
        if problems:
            log.warning("nftables rules drifted (%s); restoring them", "; ".join(problems[:3]))
            await self._apply(listing)
        self.last_problem = "; ".join(problems)
        return problems

    def tables(self) -> set[tuple[int, str]]:
        if not self.rules:
            return set()
        family, table = nft.table_of(self.network[0])
        return {(NFPROTO[family], table)}

    async def present(self) -> bool:
        cluster = self.network[0] if self.rules else None
        return cluster is None or not nft.drift(self.rules, await _listing(cluster), cluster)


async def _accepts_fully_random() -> bool:
    """Does this kernel take ``masquerade fully-random``? (``nft -c``: checked, not applied)."""
    try:
        await run_tool("nft", "-c", "-f", "-", stdin=_FULLY_RANDOM_CHECK)
    except TrafficError as e:
        log.warning("nftables: masquerade fully-random unsupported (%s)", e)
        return False
    return True


async def remove_rules(cluster: Cluster) -> bool:
    """Remove this network's rules from upstream's nftables table (``flannel-ipv6`` for an
    IPv6 network); True if there were any."""
    if shutil.which("nft") is None:
        return False
    script = nft.cleanup(await _listing(cluster), cluster)
    if script is None:
        return False
    await run_tool("nft", "-f", "-", stdin=script)
    return True
