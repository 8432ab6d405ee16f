"""Latency where the kernel has no netem: a transparent TCP delay relay in a namespace.

Connections a namespace opens to chosen far addresses (e.g. etcd members on the other "site")
are redirected by an iptables nat OUTPUT rule to a relay in that same namespace; the relay asks
the kernel where they were going (SO_ORIGINAL_DST), connects there itself (its socket carries
a mark the rule skips) and copies both ways, each byte ``delay`` ms late: a delay line, not a
throttle. Every connection is delayed by the namespace that opened it, so with a relay in each
namespace that talks across, every round trip across grows by twice the one-way delay.

The delay is read from a file, so a test can change it while connections stay up.

    python3 -m testbed.delay --port 15000 --mark 0x7e1a --delay-file /tmp/x/delay_ms
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from testbed import netns

SO_ORIGINAL_DST = 80
SO_MARK = 36
CHUNK = 65536


class DelayLine:
    def __init__(self, delay_file: Path, mark: int):
        self.delay_file, self.mark = delay_file, mark
        self.delay = self._read()

    def _read(self) -> float:
        try:
            return max(float(self.delay_file.read_text().strip() or 0), 0.0) / 1000
        except (OSError, ValueError):
            return 0.0

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.delay = self._read()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, address = struct.unpack("!2xH4s8x", raw)
        far = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        far.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        far.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        far.setblocking(False)
        try:
            await asyncio.sleep(self.delay)  # the SYN travels too
            await asyncio.get_running_loop().sock_connect(far, (socket.inet_ntoa(address), port))
            far_reader, far_writer = await asyncio.open_connection(sock=far)
        except OSError:
            far.close()
            writer.close()
            return
        await asyncio.gather(
            self._carry(reader, far_writer), self._carry(far_reader, writer), return_exceptions=True
        )

    async def _carry(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy ``src`` to ``dst``, each chunk ``delay`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await src.read(CHUNK)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            sender.cancel()
            dst.close()


async def serve(port: int, delay_file: Path, mark: int) -> None:
    line = DelayLine(delay_file, mark)
    server = await asyncio.start_server(line.accept, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), line.follow())


class DelayedPaths:
    """A relay in ``ns`` delaying its connections to ``targets`` ((address, port) pairs)."""

    def __init__(self, ns: str, targets: list[tuple[str, int]], delay_file: Path, port: int):
        self.ns, self.targets, self.delay_file, self.port = ns, targets, delay_file, port
        self.mark = 0x7E1A
        self.proc: subprocess.Popen | None = None

    def start(self) -> DelayedPaths:
        netns.run(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], ns=self.ns)
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", self.ns, sys.executable, "-m", "testbed.delay",
                f"--port={self.port}", f"--mark={self.mark}", f"--delay-file={self.delay_file}",
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.delay_file.with_name(f"relay-{self.ns}.log"), "ab"),
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the delay relay in {self.ns} did not start")
        for address, port in self.targets:
            netns.run(
                [
                    "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", address,
                    "--dport", str(port), "-m", "mark", "!", "--mark", str(self.mark),
                    "-j", "REDIRECT", "--to-ports", str(self.port),
                ],
                ns=self.ns,
            )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def set_delay(delay_file: Path, one_way_ms: float) -> None:
    """Every relay reading ``delay_file`` delays by ``one_way_ms`` within 0.1 s."""
    tmp = delay_file.with_suffix(".tmp")
    tmp.write_text(f"{one_way_ms}\n")
    tmp.rename(delay_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mark", type=lambda v: int(v, 0), required=True)
    parser.add_argument("--delay-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay_file, args.mark))
    return 0


if __name__ == "__main__":
    sys.exit(main())
