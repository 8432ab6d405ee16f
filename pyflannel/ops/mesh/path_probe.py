"""Probing one encapsulation of a peer, whatever the route says: an ICMP echo and a TCP SYN to
the peer's overlay address, sent out of a chosen device (``IP_PKTINFO``'s interface: with no
route through that device the kernel takes the address as on-link there, so the VXLAN device
resolves it with the peer's neighbour and FDB entries, and the TUN hands it to the UDP path).

The answers may come back over either encapsulation (the peer chooses its own sending path),
so the sockets are bound to no device. The SYN is built here, not by the kernel's TCP (a
connected socket bound to a device would refuse a reply arriving on the other one); the
peer's kernel answers it with a RST from its closed discard port. A classic BPF filter lets
only such answers to this prober's port reach the raw TCP socket.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from functools import partial
from ipaddress import IPv4Address

from pyflannel.kernel import cbpf
from pyflannel.ops.mesh.path_choice import PathResult
from pyflannel.ops.mesh.prober import (
    IP_MTU_DISCOVER,
    IP_PMTUDISC_PROBE,
    TIMEOUT,
    checksum,
    drain,
    echo_request,
    parse_reply,
)

IP_PKTINFO = 8  # <linux/in.h>; Python's socket module lacks it for IPv4
TCP_PORT = 9  # discard: closed on nodes, the peer's kernel answers a SYN with a RST
SYN, RST, ACK = 0x02, 0x04, 0x10
TRIES = 2  # of each kind per round: a path fails when both are lost


def pktinfo(oif: int, source: IPv4Address | None) -> list[tuple[int, int, bytes]]:
    """Ancillary data sending a datagram out of device ``oif`` (0: where the routes say) from
    ``source`` (None: the kernel's choice)."""
    if source is None and not oif:
        return []
    spec = source.packed if source is not None else bytes(4)
    return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", oif, spec, bytes(4)))]


def tcp_syn(source: IPv4Address, target: IPv4Address, sport: int, seq: int) -> bytes:
    """A TCP SYN header (no options) to the target's discard port, with its checksum."""
    header = struct.pack("!HHIIBBHHH", sport, TCP_PORT, seq, 0, 5 << 4, SYN, 65535, 0, 0)
    pseudo = source.packed + target.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    return header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]


def parse_tcp_answer(packet: bytes) -> tuple[IPv4Address, int, int] | None:
    """(source, our port, acknowledged number) of a RST or SYN-ACK read from a raw socket."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20:
        return None
    sport, dport, _, ack, _, flags = struct.unpack_from("!HHIIBB", packet, ihl)
    if sport != TCP_PORT or not flags & ACK or not flags & (RST | SYN):
        return None
    return IPv4Address(packet[12:16]), dport, ack


def answer_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF over an IPv4 packet: accept TCP from port 9 to ``port``, drop the rest."""
    ldx_msh, ldh_ind, jeq, ret = cbpf.LDX_MSH, cbpf.LD_H_IND, cbpf.JEQ_K, cbpf.RET_K
    return [
        (ldx_msh, 0, 0, 0),  # X = IPv4 header length
        (ldh_ind, 0, 0, 0),  # A = source port
        (jeq, 0, 3, TCP_PORT),
        (ldh_ind, 0, 0, 2),  # A = destination port
        (jeq, 0, 1, port),
        (ret, 0, 0, 0xFFFF),
        (ret, 0, 0, 0),
    ]


class PathProber:
    """Echoes and SYNs out of a chosen device; answers matched by id, sequence and nonce (ICMP)
    or by port and acknowledged sequence number (TCP), from the probed address only."""

    def __init__(self) -> None:
        self._ident = (os.getpid() + 1) & 0xFFFF  # not the mesh prober's
        self._seq = random.randrange(1 << 16)
        self._port = random.randrange(33000, 60000)
        self._pending: dict[tuple[str, int], tuple[IPv4Address, bytes, asyncio.Future]] = {}
        self._icmp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self.sent = 0

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        cbpf.attach(tcp, cbpf.SO_ATTACH_FILTER, answer_filter(self._port))
        icmp.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)  # DF, never split
        for sock in (icmp, tcp):
            sock.setblocking(False)
        loop.add_reader(icmp.fileno(), self._read_icmp)
        loop.add_reader(tcp.fileno(), self._read_tcp)
        self._icmp, self._tcp = icmp, tcp

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in (self._icmp, self._tcp):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
        self._icmp = self._tcp = None

    async def probe(self, target: IPv4Address, oif: int, source: IPv4Address) -> PathResult:
        """Echoes and SYNs out of ``oif`` until one of each is answered (TRIES at most)."""
        icmp, tcp = await asyncio.gather(
            self._tries(self._echo, target, oif, source),
            self._tries(self._syn, target, oif, source),
        )
        return PathResult(icmp=icmp, tcp=tcp)

    async def echo(
        self,
        target: IPv4Address,
        size: int = 64,
        oif: int = 0,
        source: IPv4Address | None = None,
    ) -> bool:
        """An echo of ``size`` bytes (IP packet, don't-fragment) answered, TRIES at most? By
        the routes and from the kernel's choice of source unless ``oif``/``source`` say."""
        return await self._tries(partial(self._echo, size=size), target, oif, source)

    async def syn(self, target: IPv4Address, source: IPv4Address, oif: int = 0) -> bool:
        """A SYN to the target's discard port answered (RST or SYN-ACK), TRIES at most?"""
        return await self._tries(self._syn, target, oif, source)

    async def _tries(self, send, target, oif, source) -> bool:
        for _ in range(TRIES):
            if await send(target, oif, source):
                return True
        return False

    async def _echo(
        self, target: IPv4Address, oif: int, source: IPv4Address | None, size: int = 64
    ) -> bool:
        assert self._icmp is not None
        self._seq = (self._seq + 1) & 0xFFFF
        nonce = os.urandom(8)
        request = echo_request(self._ident, self._seq, nonce, size)
        return await self._exchange(
            self._icmp, request, target, oif, source, ("icmp", self._seq), nonce
        )

    async def _syn(self, target: IPv4Address, oif: int, source: IPv4Address) -> bool:
        assert self._tcp is not None
        seq = random.randrange(1 << 32)
        segment = tcp_syn(source, target, self._port, seq)
        return await self._exchange(
            self._tcp, segment, target, oif, source, ("tcp", (seq + 1) & 0xFFFFFFFF), b""
        )

    async def _exchange(self, sock, data, target, oif, source, key, nonce) -> bool:
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = (target, nonce, future)
        try:
            sock.sendmsg([data], pktinfo(oif, source), 0, (str(target), 0))
            self.sent += 1
            async with asyncio.timeout(TIMEOUT):
                await future
            return True
        except (TimeoutError, OSError):
            return False
        finally:
            self._pending.pop(key, None)

    def _answer(self, key, source: IPv4Address, nonce: bytes) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        target, want, future = pending
        if source == target and nonce == want and not future.done():
            future.set_result(None)

    def _read_icmp(self) -> None:
        assert self._icmp is not None
        for packet, _ in drain(self._icmp):
            reply = parse_reply(packet)
            if reply is not None and reply[1] == self._ident:
                self._answer(("icmp", reply[2]), reply[0], reply[3])

    def _read_tcp(self) -> None:
        assert self._tcp is not None
        for packet, _ in drain(self._tcp):
            answer = parse_tcp_answer(packet)
            if answer is not None and answer[1] == self._port:
                self._answer(("tcp", answer[2]), answer[0], b"")
