"""Noticing a changed ``<prefix>/config`` while running.

The daemon keeps running with the config it started with (changing the network under running
pods is a restart's job, as upstream); this says once what changed and that a restart applies
it, and ``change`` carries it to ``pyflannel status`` until then.
"""

from __future__ import annotations

import asyncio
import logging

from pyflannel.errors import ConfigError, FlannelError
from pyflannel.subnet.config import NetworkConfig, config_changes, parse_network_config
from pyflannel.subnet.manager import SubnetManager

log = logging.getLogger(__name__)


class ConfigWatch:
    def __init__(self, store: SubnetManager, running: NetworkConfig, interval: float):
        self.store = store
        self.running = running
        self.interval = interval
        self.change = ""  # how the config in etcd differs from the running one, in words
        self._reported = b""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                raw = await self.store.network_config()
            except ConfigError as e:
                self._saw(str(e).encode(), problem=str(e))
            except FlannelError:
                continue  # store trouble: the peer watch reports it
            else:
                self.check(raw)

    def check(self, raw: bytes) -> None:
        """Compare the config in the store (``raw``) with the running one; log news once."""
        try:
            changes = config_changes(self.running, parse_network_config(raw))
        except ConfigError as e:
            self._saw(raw, problem=str(e))
        else:
            self._saw(raw, changes=changes)

    def _saw(self, raw: bytes, problem: str = "", changes: list[str] | None = None) -> None:
        if raw == self._reported:
            return
        self._reported = raw
        key = self.store.config_location
        if problem:
            self.change = f"the config in {self.store.name} is now unusable: {problem}"
            log.error(
                "network config at %s: %s; this daemon keeps running with the config it "
                "started with",
                key,
                problem,
            )
        elif changes:
            self.change = "; ".join(changes)
            log.warning(
                "network config at %s changed: %s. This daemon keeps running with the config "
                "it started with; restart it to apply the change",
                key,
                self.change,
            )
        elif self.change:
            self.change = ""
            log.info("network config at %s is again the one this daemon runs with", key)
