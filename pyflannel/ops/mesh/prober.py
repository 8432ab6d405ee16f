"""Probing every peer through the overlay: a small and a full-size ICMP echo (exactly the
overlay MTU, don't-fragment) to an address the peer's kernel answers without running anything
extra: its flannel device's ``<subnet>.0`` for VXLAN and UDP peers (the route to a peer's subnet
leads there), the CNI bridge's ``<subnet>.1`` on host-gw. Works with upstream peers, which run
no prober.

Cost is bounded: at most ``rate`` probes a second for all peers together, round robin, so a
round of N peers takes max(interval, 2N / rate) seconds. Replies are matched on the ICMP id,
sequence number, a per-probe nonce in the payload and the source address: stray or hostile ICMP
changes nothing. A state change is logged once; probes never are.

On a dual-stack network a peer's IPv6 half is a path of its own (ICMPv6 to its IPv6 subnet's
``::`` or ``::1``, keyed by that subnet), so a path broken in one family only is named.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.backend.plan import Peer, Peer6
from pyflannel.ops.mesh.health import PathRecord, PeerHealth, explain
from pyflannel.ops.mesh.path_mtu import Bisection
from pyflannel.ops.snapshot import ProbeView

log = logging.getLogger(__name__)

TIMEOUT = 1.0  # seconds a probe waits for its answer
SMALL = 64  # bytes: the small probe (the IP packet)
TCP_PORT = 9  # discard: closed on nodes, so the peer's kernel answers a SYN with a RST
# <linux/in.h>: DF set, never fragmented locally, and the route's MTU (a path fixed by
# ops/mesh/mtu_fixer.py) and any learned PMTU ignored: a probe measures the path itself
IP_MTU_DISCOVER, IP_PMTUDISC_PROBE = 10, 3
IPV6_MTU_DISCOVER = 23  # <linux/in6.h>; IPV6_PMTUDISC_PROBE is 3 as well
MEASURE_TIMEOUT = 0.2  # seconds a measuring probe waits at least (more on a slow path)
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMPV6_ECHO, ICMPV6_ECHOREPLY = 128, 129

Address = IPv4Address | IPv6Address
Half = Peer | Peer6  # a path: a peer's IPv4 half, or its IPv6 half


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, nonce: bytes, ip_size: int) -> bytes:
    """An ICMP echo request whose IPv4 packet is ``ip_size`` bytes (20 header + 8 ICMP + data)."""
    payload = nonce + bytes(max(0, ip_size - 28 - len(nonce)))
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(header + payload), ident, seq) + payload


def echo_request6(ident: int, seq: int, nonce: bytes, ip_size: int) -> bytes:
    """An ICMPv6 echo request whose IPv6 packet is ``ip_size`` bytes (40 header + 8 ICMPv6 +
    data); the kernel fills in the checksum of a raw ICMPv6 socket."""
    payload = nonce + bytes(max(0, ip_size - 48 - len(nonce)))
    return struct.pack("!BBHHH", ICMPV6_ECHO, 0, 0, ident, seq) + payload


def parse_reply6(packet: bytes, source: str) -> tuple[IPv6Address, int, int, bytes] | None:
    """(source, id, seq, first payload bytes) of an ICMPv6 echo reply (a raw ICMPv6 socket
    reads no IPv6 header: the source comes from recvfrom)."""
    if len(packet) < 16 or packet[0] != ICMPV6_ECHOREPLY:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    try:
        address = IPv6Address(source.split("%")[0])
    except ValueError:
        return None
    return address, ident, seq, bytes(packet[8:16])


def parse_reply(packet: bytes) -> tuple[IPv4Address, int, int, bytes] | None:
    """(source, id, seq, first payload bytes) of an echo reply read from a raw socket."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 16 or icmp[0] != ICMP_ECHOREPLY:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", icmp[:8])
    return IPv4Address(packet[12:16]), ident, seq, bytes(icmp[8:16])


def drain(sock: socket.socket):
    """Every datagram waiting on a non-blocking socket, with its sender."""
    while True:
        try:
            yield sock.recvfrom(65535)
        except OSError:  # BlockingIOError (drained) and real errors alike: stop reading
            return


class MeshProber:
    def __init__(
        self,
        peers: Callable[[], list[Peer]],
        target: Callable[[Half], Address],
        mtu: Callable[[], int],
        interval: float,
        rate: float,
        after_round: Callable[[], Awaitable[None]] | None = None,
    ):
        """``after_round``: called after each round (the path MTU fixer reads its results)."""
        self.peers, self.target, self.mtu = peers, target, mtu
        self.interval, self.rate = interval, rate
        self.after_round = after_round
        self.records: dict[IPv4Network | IPv6Network, PathRecord] = {}
        self.sent = 0
        self._ident = os.getpid() & 0xFFFF
        self._seq = random.randrange(1 << 16)
        self._pending: dict[int, tuple[Address, bytes, asyncio.Future]] = {}
        self._sock: socket.socket | None = None
        self._sock6: socket.socket | None = None  # opened when a peer has an IPv6 half

    async def run(self, rounds: int | None = None) -> None:
        """Probe every peer each interval, forever (or ``rounds`` times, for a one-off check)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._read)
        try:
            done = 0
            while rounds is None or done < rounds:
                started = loop.time()
                await self._round()
                if self.after_round is not None:
                    await self.after_round()
                done += 1
                left = self.interval - (loop.time() - started)
                await asyncio.sleep(max(0.0, left) * random.uniform(0.9, 1.1))  # jittered
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            if self._sock6 is not None:
                loop.remove_reader(self._sock6.fileno())
                self._sock6.close()
                self._sock6 = None

    def _open_ipv6(self) -> bool:
        if self._sock6 is None:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            except OSError as e:
                log.warning("mesh: cannot probe IPv6 paths: %s", e)
                return False
            self._sock6 = sock
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read6)
        return True

    async def _round(self) -> None:
        peers = self.peers()
        halves: list[Half] = [half for p in peers for half in (p, p.v6) if half is not None]
        if any(isinstance(h, Peer6) for h in halves) and not self._open_ipv6():
            halves = [h for h in halves if isinstance(h, Peer)]
        wanted = {h.subnet for h in halves}
        for gone in set(self.records) - wanted:  # a peer that left is not probed any more
            del self.records[gone]
        waits = []
        for half in halves:
            for kind in ("small", "full", "tcp"):
                waits.append(asyncio.create_task(self._probe(half, kind)))
                await asyncio.sleep(1 / self.rate)
        await asyncio.gather(*waits)

    async def _probe(self, peer: Half, kind: str) -> None:
        record = self.records.setdefault(peer.subnet, PathRecord())
        target = self.target(peer)
        mtu = self.mtu()
        if kind == "tcp":
            self._record(peer, record, kind, await self._tcp(target), mtu)
            return
        size = SMALL if kind == "small" else mtu
        self._record(peer, record, kind, await self._echo(target, size, TIMEOUT), mtu)

    async def _echo(self, target: Address, size: int, timeout: float) -> float | None:
        """One don't-fragment echo of ``size`` bytes (the IP packet): its RTT in ms, None if
        lost (or refused locally: larger than this node's own device)."""
        self._seq = (self._seq + 1) & 0xFFFF
        seq, nonce = self._seq, os.urandom(8)
        future = asyncio.get_running_loop().create_future()
        self._pending[seq] = (target, nonce, future)
        t0 = time.monotonic()
        try:
            if target.version == 6:
                assert self._sock6 is not None
                request = echo_request6(self._ident, seq, nonce, size)
                self._sock6.sendto(request, (str(target), 0))
            else:
                assert self._sock is not None
                request = echo_request(self._ident, seq, nonce, size)
                self._sock.sendto(request, (str(target), 0))
            self.sent += 1
            async with asyncio.timeout(timeout):
                await future
            return (time.monotonic() - t0) * 1000
        except (TimeoutError, OSError):
            return None
        finally:
            self._pending.pop(seq, None)

    async def passes(self, half: Half, size: int) -> bool:
        """Does the path to ``half`` carry a don't-fragment packet of ``size`` now?"""
        return await self._echo(self.target(half), size, TIMEOUT) is not None

    async def largest(self, half: Half, too_large: int) -> tuple[int, int, float] | None:
        """The largest don't-fragment packet the path to ``half`` carries, below
        ``too_large`` (a size seen lost): bisected, each probe waiting a few round trips.
        (size, probes spent, seconds), or None if even the smallest is not answered now."""
        record = self.records.get(half.subnet)
        rtt = (record.rtt_max if record else None) or TIMEOUT * 1000
        timeout = min(TIMEOUT, max(MEASURE_TIMEOUT, 5 * rtt / 1000))
        target, t0 = self.target(half), time.monotonic()
        search = Bisection(passes=SMALL, fails=too_large)
        while (size := search.next_size()) is not None:
            search.record(size, await self._echo(target, size, timeout) is not None)
        # a probe lost by chance looks like one too large: the size found must pass again
        if await self._echo(target, search.found, TIMEOUT) is None:
            return None
        return search.found, search.probes + 1, time.monotonic() - t0

    async def _tcp(self, target: Address) -> float | None:
        """A TCP exchange through the overlay: connect to a closed port; a RST (refused) or an
        accept is an answer, silence is not."""
        t0 = time.monotonic()
        self.sent += 1
        try:
            async with asyncio.timeout(TIMEOUT):
                _, writer = await asyncio.open_connection(str(target), TCP_PORT)
            writer.close()
        except ConnectionRefusedError:
            pass
        except (TimeoutError, OSError):
            return None
        return (time.monotonic() - t0) * 1000

    def _record(
        self, peer: Half, record: PathRecord, kind: str, rtt: float | None, mtu: int
    ) -> None:
        changed = record.add(kind, rtt, time.time())
        if changed is not None:
            problem = explain(changed, str(peer.subnet), str(peer.public_ip), mtu, record.loss)
            (log.warning if problem else log.info)(
                "mesh: peer %s at %s is now %s%s",
                peer.subnet,
                peer.public_ip,
                changed.value,
                f": {problem}" if problem else "",
            )

    def _read(self) -> None:
        assert self._sock is not None
        for packet, _ in drain(self._sock):
            self._match(parse_reply(packet))

    def _read6(self) -> None:
        assert self._sock6 is not None
        for packet, address in drain(self._sock6):
            self._match(parse_reply6(packet, address[0]))

    def _match(self, reply: tuple[Address, int, int, bytes] | None) -> None:
        if reply is None:
            return
        source, ident, seq, nonce = reply
        pending = self._pending.get(seq)
        if ident != self._ident or pending is None:
            return
        target, want_nonce, future = pending
        if source == target and nonce == want_nonce and not future.done():
            future.set_result(None)

    def view(self) -> dict[str, ProbeView]:
        """Per peer subnet: state, RTT median/recent max (ms), loss, time of the last change."""

        return {
            str(subnet): ProbeView(r.state.value, r.rtt_median, r.rtt_max, r.loss, r.since)
            for subnet, r in self.records.items()
        }


__all__ = ["MeshProber", "PeerHealth"]
