"""One traffic-rules interface, two implementations (upstream's trafficmngr): iptables
(iptables.py, the default) and nftables (nftables.py, ``EnableNFTables``). Both apply a
network's rules in one transaction, check them every --iptables-resync seconds and repair and
log any drift, and remove their own rules when the node uses the other mode (families.py)."""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Any

from pyflannel.errors import FlannelError
from pyflannel.traffic.ownership import Cluster

log = logging.getLogger(__name__)


class TrafficError(FlannelError):
    retryable = True


async def run_tool(*cmd: str, stdin: str | None = None) -> str:
    """Run iptables/nft; its output, or TrafficError with what it said."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise TrafficError(f"{cmd[0]} not found") from None
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise TrafficError(
            f"{' '.join(cmd[:3])} failed: {err.decode().strip() or out.decode().strip()}"
        )
    return out.decode()


class TrafficManager(abc.ABC):
    mode: str = ""

    def __init__(
        self,
        masquerade: bool,
        forward: bool,
        random_fully_disabled: bool = False,
        peer_filter_port: int | None = None,
        family: int = 4,
        site_port: int | None = None,
    ):
        self.family = family  # 6: the IPv6 rules of a dual-stack network
        self.masquerade = masquerade
        self.forward = forward
        self.random_fully_disabled = random_fully_disabled
        self.peer_filter_port = (
            peer_filter_port  # set: accept VXLAN only from peers (--vxlan-peer-filter)
        )
        self.site_port = site_port  # set: count strangers' datagrams to the site link (--site)
        self.strangers: int | None = None  # how many (None: not counted)
        self._network: tuple[Cluster, Cluster] | None = None  # (cluster, pod)
        self.rules: list[Any] = []
        self.restores = 0
        self.last_problem = ""

    @property
    def enabled(self) -> bool:
        return (
            self.masquerade
            or self.forward
            or self.peer_filter_port is not None
            or self.site_port is not None
        )

    @property
    def network(self) -> tuple[Cluster, Cluster]:
        """(cluster, pod subnet) the rules are for (after ``setup``)."""
        assert self._network is not None, "setup() first"
        return self._network

    @abc.abstractmethod
    async def setup(self, cluster: Cluster, pod: Cluster) -> None:
        """Install the rules for this network and subnet (again, after the subnet changed)."""

    @abc.abstractmethod
    async def check(self) -> list[str]:
        """Drift between the rules and the kernel; repaired if there is any."""

    @abc.abstractmethod
    async def present(self) -> bool:
        """Are all rules in place (for status and readiness)?"""

    @abc.abstractmethod
    def tables(self) -> set[tuple[int, str]]:
        """The nf_tables tables its rules are in, as (NFPROTO family, name): a change
        announced in one of them is worth a check (traffic/repair.py)."""

    async def set_peers(self, public_ips: list[str]) -> None:  # noqa: B027 - optional
        """Follow the peer set (the VXLAN peer filter, where the mode has one)."""

    @abc.abstractmethod
    async def set_clamps(self, clamps: dict[Cluster, int]) -> None:
        """TCP MSS clamped for traffic to and from these peer subnets (ops/mesh/mtu_fixer.py)."""

    async def set_site_members(self, addresses: list[str]) -> None:  # noqa: B027 - optional
        """Follow the addresses the network's nodes reach the site link from (--site: the
        count of strangers' datagrams, where the mode keeps one)."""
