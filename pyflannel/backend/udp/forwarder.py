"""The UDP backend's data path: TUN -> UDP and UDP -> TUN, one inner IPv4 packet per datagram.

All packet handling is in ``from_tun`` and ``from_udp``; how the loop waits for packets is a
separate, swappable strategy (``DATAPATHS``), measured in bench/dataplane.py:
- ``threads``: one thread per direction, each blocking in poll() and then draining its
  non-blocking fd until EAGAIN, so a busy fd costs one poll per batch, not per packet;
- ``asyncio`` / ``uvloop``: both fds on one event loop in one thread, draining per wake-up.
The default (``auto``) is the stdlib loop. Either way the data path runs outside the daemon's control-plane event loop: route updates
swap an immutable table (one reference assignment) and never wait for packets, and packets
never wait for etcd or netlink.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from pyflannel.backend.udp import packet as pk
from pyflannel.backend.udp.routes import ForwardingTable

log = logging.getLogger(__name__)

BUFFER = 65536  # read whole datagrams: anything longer than the MTU is dropped, not truncated
DATAPATHS = ("threads", "asyncio", "uvloop")


def resolve_datapath(name: str) -> str:
    """``auto`` is the stdlib loop. bench/dataplane.py (three runs, MTU 1500 and 9000): one
    event-loop thread beats two threads by 10-17 % on 2 cores; uvloop ties the stdlib loop
    on throughput, and on latency it won one run and lost two — no reason to need it."""
    return "asyncio" if name == "auto" else name


SEND_ERROR = "send_error"
WRITE_ERROR = "write_error"
INTERNAL_ERROR = "internal_error"


@dataclass
class Counters:
    """Per direction; each is written by one thread only."""

    packets: int = 0
    bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class Forwarder:
    def __init__(self, tun_fd: int, sock: socket.socket, mtu: int, datapath: str = "auto"):
        datapath = resolve_datapath(datapath)
        if datapath not in DATAPATHS:
            raise ValueError(
                f"unknown UDP data path {datapath!r}; choose from {', '.join(DATAPATHS)}"
            )
        self.tun_fd = tun_fd
        self.sock = sock
        self.mtu = mtu
        self.datapath = datapath
        self.table = ForwardingTable()
        self.local_net = self.local_mask = 0xFFFFFFFF  # matches nothing until set_local()
        self.icmp_source = 0
        self.to_peers = Counters()  # TUN -> UDP
        self.from_peers = Counters()  # UDP -> TUN
        self.icmp_sent = 0
        self._threads: list[threading.Thread] = []
        self._stop_r, self._stop_w = os.pipe()
        self._loop = None
        self._errors_logged: set[str] = set()
        self.failed: str | None = None  # why a data-path thread died (the device vanished...)

    def set_local(self, subnet: IPv4Network, network: IPv4Network) -> None:
        """Our subnet: the only inner destinations accepted from peers.

        ICMP errors come from the cluster network's own address (10.1.0.0), never leased:
        upstream uses the TUN's address, which is local to this host, so the kernel drops
        those errors as martians before they reach the pod."""
        self.local_mask = int(subnet.netmask)
        self.local_net = int(subnet.network_address)
        self.icmp_source = int(network.network_address)

    # -- one packet each way ---------------------------------------------------------------

    def from_tun(self, data: bytes) -> None:
        counters = self.to_peers
        if len(data) < pk.IPV4_MIN_HEADER or data[0] >> 4 != 4:
            counters.drop(pk.TOO_SHORT if len(data) < pk.IPV4_MIN_HEADER else pk.NOT_IPV4)
            return
        hop = self.table.lookup(int.from_bytes(data[16:20], "big"))
        if hop is None:
            counters.drop(pk.NO_ROUTE)
            if pk.wants_icmp_error(data):
                self._write_tun(pk.net_unreachable(data, self.icmp_source), counters)
                self.icmp_sent += 1
            return
        buf = bytearray(data)
        if not pk.decrement_ttl(buf):
            counters.drop(pk.TTL_EXPIRED)
            return
        try:
            self.sock.sendto(buf, hop)
        except OSError as e:
            counters.drop(SEND_ERROR)
            self._log_error(f"sendto {hop[0]}:{hop[1]}", e)
            return
        counters.packets += 1
        counters.bytes += len(buf)

    def from_udp(self, data: bytes, sender: str) -> None:
        counters = self.from_peers
        owned = self.table.senders.get(sender)
        if owned is None:
            counters.drop(pk.UNKNOWN_SENDER)
            return
        reason = pk.problem(data, self.mtu)
        if reason is not None:
            counters.drop(reason)
            return
        if int.from_bytes(data[16:20], "big") & self.local_mask != self.local_net:
            counters.drop(pk.NOT_FOR_US)  # we are no relay
            return
        src = int.from_bytes(data[12:16], "big")
        if not any(src & mask == net for net, mask in owned):
            counters.drop(pk.SPOOFED_SOURCE)
            return
        buf = bytearray(data)
        if not pk.decrement_ttl(buf):
            counters.drop(pk.TTL_EXPIRED)
            return
        if self._write_tun(buf, counters):
            counters.packets += 1
            counters.bytes += len(buf)

    def _write_tun(self, data: bytes | bytearray, counters: Counters) -> bool:
        try:
            os.write(self.tun_fd, data)
            return True
        except OSError as e:
            counters.drop(WRITE_ERROR)
            self._log_error("write to TUN", e)
            return False

    def _log_error(self, what: str, e: OSError) -> None:
        key = f"{what}:{e.errno}"
        if key not in self._errors_logged:  # once per kind, the counters carry the rest
            self._errors_logged.add(key)
            log.warning("udp data path: %s failed: %s (counted; logged once)", what, e)

    # -- draining --------------------------------------------------------------------------

    def drain_tun(self) -> None:
        read, fd, handle = os.read, self.tun_fd, self.from_tun
        while True:
            try:
                data = read(fd, BUFFER)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EBADF:
                    return
                raise
            try:
                handle(data)
            except Exception as e:  # never let one packet stop the path
                self.to_peers.drop(INTERNAL_ERROR)
                log.exception("udp data path: packet from TUN: %s", e)

    def drain_udp(self) -> None:
        recv, handle = self.sock.recvfrom, self.from_udp
        while True:
            try:
                data, addr = recv(BUFFER)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EBADF, errno.ENOTSOCK):
                    return
                # ICMP errors from earlier sends surface here (ECONNREFUSED...): keep going.
                self.from_peers.drop(SEND_ERROR)
                continue
            try:
                handle(data, addr[0])
            except Exception as e:
                self.from_peers.drop(INTERNAL_ERROR)
                log.exception("udp data path: datagram from %s: %s", addr[0], e)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.datapath == "threads":
            self._threads = [
                threading.Thread(
                    target=self._poll_loop,
                    args=(self.tun_fd, self.drain_tun),
                    name="udp-tun-to-peers",
                    daemon=True,
                ),
                threading.Thread(
                    target=self._poll_loop,
                    args=(self.sock.fileno(), self.drain_udp),
                    name="udp-peers-to-tun",
                    daemon=True,
                ),
            ]
        else:
            self._threads = [
                threading.Thread(target=self._event_loop, name="udp-data-path", daemon=True)
            ]
        for t in self._threads:
            t.start()

    def _poll_loop(self, fd: int, drain) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = poller.poll()
                if any(f == self._stop_r for f, _ in ready):
                    return
                if any(
                    ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
                    for f, ev in ready
                    if f == fd
                ):
                    raise OSError(errno.EIO, "device or socket closed under the data path")
                drain()
        except OSError as e:
            self.failed = f"{threading.current_thread().name}: {e}"
            log.error("udp data path stopped: %s; the reconciler will restart it", self.failed)

    @property
    def alive(self) -> bool:
        return self.failed is None and all(t.is_alive() for t in self._threads)

    def _event_loop(self) -> None:
        if self.datapath == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            import asyncio

            loop = asyncio.new_event_loop()
        self._loop = loop
        loop.add_reader(self.tun_fd, self.drain_tun)
        loop.add_reader(self.sock.fileno(), self.drain_udp)
        loop.add_reader(self._stop_r, loop.stop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        os.close(self._stop_r)
        os.close(self._stop_w)

    def snapshot(self) -> dict:
        return {
            "datapath": self.datapath,
            "to_peers": {
                "packets": self.to_peers.packets,
                "bytes": self.to_peers.bytes,
                "drops": dict(self.to_peers.drops),
            },
            "from_peers": {
                "packets": self.from_peers.packets,
                "bytes": self.from_peers.bytes,
                "drops": dict(self.from_peers.drops),
            },
            "icmp_unreachable_sent": self.icmp_sent,
            "peers": len(self.table),
            "time": time.time(),
        }
