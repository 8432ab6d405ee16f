"""extension (upstream pkg/backend/extension): the operator's own data plane, built by the
commands of the network config (commands.py). pyflannel runs them where upstream does and
adds what an operator needs when one fails: its exit status and output in the log and in
``pyflannel status``, and a retry every ``--reconcile-interval`` (upstream never retries and
exits when the pre-startup command fails; here the daemon keeps running and tries again).

The MTU in subnet.env is the interface's, as upstream's, unless ``Backend.MTU`` (pyflannel
only) says what the commands' encapsulation leaves: upstream's documented VXLAN-by-commands
gives pods 1500 over a 1500 underlay, and the mesh prober names that an MTU black hole.
Peers of another backend type are ignored, as upstream does; nothing else of the kernel is
pyflannel's (no device, no route of its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from pyflannel.backend.base import Backend
from pyflannel.backend.extension.commands import (
    ExtensionConfig,
    Outcome,
    parse_extension_config,
    peer_env,
    run,
)
from pyflannel.backend.plan import Peer, PeerDataError, public_ip_of
from pyflannel.backend.registry import BackendContext
from pyflannel.backoff import Backoff
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import PeerChanges

log = logging.getLogger(__name__)
NAME = "extension"


@dataclass(frozen=True)
class Call:
    """One run of a command: its config key, text, environment and stdin."""

    key: str
    command: str
    env: dict[str, str]
    stdin: str = ""


DUAL_STACK = True  # the commands get the IPv6 subnets and addresses too


async def start(ctx: BackendContext) -> tuple[Backend, LeaseAttrs]:
    """Registry entry "extension": the pre-startup command run until it succeeds."""
    backend = ExtensionBackend(ctx.netlink, ctx.network, ctx.ext)
    return backend, await backend.prepare()


class ExtensionBackend(Backend):
    name = NAME
    probe_host = 1  # the mesh prober reaches a peer's CNI bridge (<subnet>.1), as host-gw's

    def __init__(self, netlink, network, ext):
        super().__init__(netlink, network, ext)
        self.config: ExtensionConfig = parse_extension_config(network.backend)
        self.mtu = self.config.mtu or ext.mtu
        self.backend_data: str | None = None  # the pre-startup command's output
        # what failed, by what it was for ("add 10.1.5.0/24"): run again every reconcile
        self.failing: dict[str, tuple[Call, Outcome]] = {}

    @property
    def mtu_reason(self) -> str:
        if self.config.mtu:
            return f"{self.config.mtu} (Backend.MTU)"
        return f"{self.ext.mtu} ({self.ext.name} MTU; set Backend.MTU if the commands encapsulate)"

    async def prepare(self) -> LeaseAttrs:
        if not self.config.pre_startup:
            log.info("extension: no pre-startup command configured - skipping")
            return self.lease_attrs()
        backoff = Backoff(first=1.0, cap=30.0)
        while True:
            outcome = await run(self.config.pre_startup)
            if outcome.ok:
                log.info("extension: ran PreStartupCommand; output: %s", outcome.output)
                self.backend_data = outcome.output
                return self.lease_attrs()
            delay = backoff.next()
            log.error(
                "extension: PreStartupCommand failed (%s); the lease waits for it, retrying "
                "in %.0f s",
                outcome.describe(),
                delay,
            )
            await asyncio.sleep(delay)

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(
            public_ip=self.ext.public_ip,
            public_ipv6=self.ext.public_ipv6 if self.network.enable_ipv6 else None,
            backend_type=NAME,
            backend_data=self.backend_data,
        )

    async def configure(self, lease: Lease) -> None:
        if not self.config.post_startup:
            return
        env = {"NETWORK": str(self.network.cidr)}
        env.update(
            peer_env(lease.subnet, self.ext.public_ip, lease.ipv6_subnet, self.ext.public_ipv6)
        )
        await self._command(
            Call("PostStartupCommand", self.config.post_startup, env), "post-startup"
        )

    async def peer(self, lease: Lease) -> Peer:
        if lease.attrs.backend_type != NAME:
            raise PeerDataError(
                f"backend type is {lease.attrs.backend_type or 'udp'!r}, not extension"
            )
        data = lease.attrs.backend_data
        if data is not None and not isinstance(data, str):
            raise PeerDataError(
                "BackendData is not a JSON string (the peer's PreStartupCommand output)"
            )
        return Peer(lease.subnet, public_ip_of(lease), NAME)

    async def peers_updated(self, changes: PeerChanges, before: AbstractSet[IPv4Network]) -> None:
        """After the reconciler's peer list (status shows it): each accepted peer's command,
        remove for leases gone or changed, add for leases new or changed."""
        for lease in changes.removed:
            if lease.subnet in before and self.config.subnet_remove:
                self.failing.pop(f"add {lease.subnet}", None)
                await self._peer_command(
                    "SubnetRemoveCommand", self.config.subnet_remove, lease, "remove"
                )
        for lease in changes.added:
            if lease.subnet in self.peers and self.config.subnet_add:
                await self._peer_command("SubnetAddCommand", self.config.subnet_add, lease, "add")

    async def _peer_command(self, key: str, command: str, lease: Lease, verb: str) -> None:
        data = lease.attrs.backend_data if isinstance(lease.attrs.backend_data, str) else ""
        public_ip6 = lease.attrs.public_ipv6 if lease.ipv6_subnet is not None else None
        env = peer_env(lease.subnet, lease.attrs.public_ip, lease.ipv6_subnet, public_ip6)
        await self._command(Call(key, command, env, data), f"{verb} {lease.subnet}")

    async def _command(self, call: Call, what: str) -> None:
        outcome = await run(call.command, call.env, call.stdin)
        before = self.failing.pop(what, None)
        if outcome.ok:
            log.info(
                "extension: ran %s for %s; output: %s", call.key, what, outcome.output or "(none)"
            )
            return
        if before is None or before[1] != outcome:  # each distinct failure logged once
            log.error(
                "extension: %s for %s failed (%s); retrying every reconcile",
                call.key,
                what,
                outcome.describe(),
            )
        self.failing[what] = (call, outcome)

    async def ensure_devices(self) -> list[str]:
        """Each reconcile: the commands that failed, again."""
        retried = []
        for what, (call, _) in list(self.failing.items()):
            await self._command(call, what)
            if what not in self.failing:
                retried.append(f"extension {what}")
        return retried

    def status_details(self) -> dict[str, Any]:
        return {
            "commands": {k: v for k, v in vars(self.config).items() if v},
            "failed": {what: outcome.describe() for what, (_, outcome) in self.failing.items()},
        }
