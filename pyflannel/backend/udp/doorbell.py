"""Accepting UDP encapsulation before the UDP path runs: a VXLAN node advertises ``UDPPort``
but starts its workers only on need. Until then one socket listens on that port; the first
datagram from a peer that may send there rings the bell (the path then starts and binds the
port itself). Datagrams from anyone else change nothing. What rang is lost: a peer's probes
or retransmissions bring the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Address

log = logging.getLogger(__name__)


class Doorbell:
    def __init__(
        self,
        address: IPv4Address,
        port: int,
        known: Callable[[str], bool],
        ring: Callable[[str], None],
    ):
        self.address, self.port = address, port
        self.known, self.ring = known, ring
        self._sock: socket.socket | None = None

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((str(self.address), self.port))
        except OSError as e:
            sock.close()
            log.warning(
                "cannot listen on %s:%d for UDP encapsulation before the UDP path runs: %s",
                self.address,
                self.port,
                e.strerror,
            )
            return
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _read(self) -> None:
        assert self._sock is not None
        while self._sock is not None:
            try:
                _, (sender, _) = self._sock.recvfrom(65535)
            except OSError:
                return
            if self.known(sender):
                self.close()
                self.ring(sender)
                return
            log.debug("UDP encapsulation from %s, not a peer that may send it: ignored", sender)
