"""Loading the network config at start: from the store, retried every second until it exists
and is valid (as upstream waits: it may be fixed in etcd meanwhile), each distinct problem
said once (and again every CONFIG_REMINDER seconds); a config this daemon will not serve
(``subnet.config.check_supported``, asked at start) ends the start instead, since waiting
cannot fix it."""

from __future__ import annotations

import asyncio
import logging
import time

from pyflannel.backoff import Outage
from pyflannel.errors import ConfigError, StoreUnavailable
from pyflannel.subnet.config import NetworkConfig, parse_network_config
from pyflannel.subnet.manager import SubnetManager

log = logging.getLogger(__name__)

CONFIG_RETRY = 1.0  # seconds, as upstream
CONFIG_REMINDER = 30.0  # repeat an unchanged config error this often, not every second


async def load_network_config(store: SubnetManager, retry: float = CONFIG_RETRY) -> NetworkConfig:
    """The network config, waiting until it exists and is valid."""
    last_error, last_logged = "", 0.0
    outage = Outage(log, f"{store.name} unreachable while reading the network config")
    while True:
        try:
            cfg = parse_network_config(await store.network_config())
            outage.ok()
            return cfg
        except StoreUnavailable as e:
            outage.failed(e, f"retrying every {retry:.0f} s")
        except ConfigError as e:
            outage.ok()
            now = time.monotonic()
            if str(e) != last_error or now - last_logged > CONFIG_REMINDER:
                log.error(
                    "network config at %s: %s; retrying every %.0f s",
                    store.config_location,
                    e,
                    retry,
                )
                last_error, last_logged = str(e), now
        await asyncio.sleep(retry)
