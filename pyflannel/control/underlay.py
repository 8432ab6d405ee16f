"""Following the underlay: has the external interface or its address changed? Then the tunnel
endpoint moves and the lease is re-advertised with the new public IP, keeping the subnet."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pyflannel.backend.dataplane import DataPlane
from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.errors import InterfaceError
from pyflannel.kernel.iface import ExtIface
from pyflannel.subnet.table import LeaseTable

log = logging.getLogger(__name__)


class UnderlayFollower:
    def __init__(
        self,
        ext: ExtIface,
        choose: Callable[[], Awaitable[ExtIface]],
        plane: DataPlane,
        keeper: LeaseKeeper,
        table: LeaseTable,
        moved: Callable[[], None],
    ):
        """``choose``: the external interface as chosen now; ``moved``: after a move (the
        MTU may have changed: subnet.env follows)."""
        self.ext = ext
        self.choose = choose
        self.plane = plane
        self.keeper = keeper
        self.table = table
        self.moved = moved
        self._problem = ""

    async def check(self) -> None:
        try:
            ext = await self.choose()
        except InterfaceError as e:
            if str(e) != self._problem:
                log.error("underlay: %s; keeping the current set-up until it is back", e)
                self._problem = str(e)
            return
        if self._problem:
            log.info("underlay: back (%s)", ext.describe())
            self._problem = ""
        if ext == self.ext:
            return
        log.warning(
            "UNDERLAY CHANGED: %s -> %s; moving the tunnel endpoint and updating the lease",
            self.ext.describe(),
            ext.describe(),
        )
        self.ext = ext
        attrs = await self.plane.move_underlay(ext)
        self.table.own_ip = ext.public_ip
        self.keeper.change_attrs(attrs)
        self.moved()
