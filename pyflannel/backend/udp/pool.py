"""The daemon's side of the UDP data-path workers (worker.py): starting the processes with
their descriptors, sending them the forwarding table, collecting their counters, noticing
when one dies.

Worker processes are started with exec (``python -m``), never a bare fork: a forked copy of
the daemon would carry its event loop, its netlink thread's state and its etcd connections
into a process that must own none of them. They import the daemon's own copy of pyflannel,
wherever it is installed (the Debian package keeps it in a private directory that is not on
Python's default path).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pyflannel.backend.udp.worker import encode

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 1.0  # seconds a worker has to answer a snapshot request
SEND_TIMEOUT = 5.0


class Channel:
    """One worker's control socket: JSON lines out, replies matched by request number.

    ``send`` only queues: a writer thread of the channel writes, in order, so a caller on the
    daemon's event loop never waits for a busy worker to read a large forwarding table."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(SEND_TIMEOUT)
        self._pending = b""
        self.broken: str | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="udp-control", daemon=True)
        self._writer.start()

    def send(self, message: dict) -> None:
        if not self.broken:
            self._outbox.put(encode(message))

    def _write(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError as e:
                self.broken = f"control socket: {e}"
                return

    def reply(self, message: dict, key: str, deadline: float) -> dict | None:
        """The answer to ``message`` (sent before), matched on ``key``; None by ``deadline``
        (a monotonic time), if the socket broke, or if the channel was closed meanwhile (the
        path restarted under a snapshot)."""
        while not self.broken:
            line, newline, rest = self._pending.partition(b"\n")
            if newline:
                self._pending = rest
                reply = json.loads(line)
                if reply.get(key) == message[key]:
                    return reply
                continue  # the late answer to an earlier request that timed out
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return None
                chunk = self.sock.recv(1 << 16)
            except ValueError:  # closed here (its descriptor is -1)
                self.broken = "control socket closed"
                return None
            except OSError as e:
                self.broken = f"control socket: {e}"
                return None
            if not chunk:
                self.broken = "control socket closed"
                return None
            self._pending += chunk
        return None

    def close(self) -> None:
        """Write what is queued, then close (the worker exits on end of file)."""
        self._outbox.put(None)
        self._writer.join(SEND_TIMEOUT)
        self.sock.close()


class WorkerPool:
    def __init__(
        self,
        mtu: int,
        datapath: str,
        fastpath: bool,
        verbosity: int = 0,
        priority: str = "normal",
    ):
        self.mtu = mtu
        self.priority = priority
        self.datapath = datapath
        self.fastpath = fastpath
        self.verbosity = verbosity
        self.processes: list[subprocess.Popen] = []
        self.channels: list[Channel] = []
        self._send_lock = threading.Lock()  # whole lines on the control sockets
        self._request_lock = threading.Lock()  # one snapshot at a time reads the replies
        self._requests = 0

    def start(self, tun_fds: list[int], socks: list[socket.socket], setup: list[dict]) -> None:
        """One worker per (TUN queue, socket) pair, each given the ``setup`` messages before
        it forwards a packet. The caller closes its own copies of the descriptors."""
        for index, (tun_fd, sock) in enumerate(zip(tun_fds, socks, strict=True)):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            command = [
                sys.executable,
                "-m",
                "pyflannel.backend.udp.worker",
                f"--index={index}",
                f"--tun-fd={tun_fd}",
                f"--sock-fd={sock.fileno()}",
                f"--control-fd={theirs.fileno()}",
                f"--mtu={self.mtu}",
                f"--datapath={self.datapath}",
                f"--priority={self.priority}",
                f"-v={self.verbosity}",
            ] + (["--fastpath"] if self.fastpath else [])
            try:
                process = subprocess.Popen(
                    command,
                    pass_fds=(tun_fd, sock.fileno(), theirs.fileno()),
                    close_fds=True,
                    env=worker_environment(),
                )
            except OSError:
                ours.close()
                self.stop()
                raise
            finally:
                theirs.close()
            self.processes.append(process)
            self.channels.append(Channel(ours))
        for message in [*setup, {"start": True}]:
            self.send(message)

    def send(self, message: dict) -> None:
        with self._send_lock:
            for channel in self.channels:
                channel.send(message)

    def problem(self) -> str | None:
        """Why the pool no longer forwards everything, if it does not."""
        for index, (process, channel) in enumerate(zip(self.processes, self.channels, strict=True)):
            code = process.poll()
            if code is not None:
                return f"worker {index} (pid {process.pid}) exited with status {code}"
            if channel.broken:
                return f"worker {index} (pid {process.pid}): {channel.broken}"
        return None

    def snapshot(self) -> dict:
        """Every worker's counters, merged. Blocks for up to REPLY_TIMEOUT in all (the
        workers are asked at once): callers on an event loop run it in a thread."""
        with self._request_lock:
            self._requests += 1
            request = {"snapshot": self._requests}
            self.send(request)
            deadline = time.monotonic() + REPLY_TIMEOUT
            replies = [channel.reply(request, "snapshot", deadline) for channel in self.channels]
        return merge(
            [reply["stats"] if reply else None for reply in replies],
            [p.pid for p in self.processes],
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Close the control sockets (each worker exits on end of file), then reap."""
        for channel in self.channels:
            channel.close()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("UDP worker pid %d did not stop; killing it", process.pid)
                process.kill()
                process.wait()
        self.processes, self.channels = [], []


def merge(snapshots: list[dict | None], pids: list[int]) -> dict:
    """One view of the whole data path from the workers' counters (None: no answer)."""
    answered = [s for s in snapshots if s is not None]
    total: dict = {
        "workers": len(snapshots),
        "datapath": answered[0]["datapath"] if answered else None,
        "to_peers": _sum_direction(s["to_peers"] for s in answered),
        "from_peers": _sum_direction(s["from_peers"] for s in answered),
        "icmp_unreachable_sent": sum(s["icmp_unreachable_sent"] for s in answered),
        "fastpath": {
            "tx": bool(answered) and all(s["fastpath"]["tx"] for s in answered),
            "rx": bool(answered) and all(s["fastpath"]["rx"] for s in answered),
            "tso": bool(answered) and all(s["fastpath"]["tso"] for s in answered),
            "off": {k: v for s in answered for k, v in s["fastpath"]["off"].items()},
        },
        "peers": max((s["peers"] for s in answered), default=0),
        "priority": _merge_priority([s["priority"] for s in answered if "priority" in s]),
        "per_worker": [
            {
                "pid": pid,
                "to_peers": s["to_peers"]["packets"] if s else None,
                "from_peers": s["from_peers"]["packets"] if s else None,
            }
            for s, pid in zip(snapshots, pids, strict=True)
        ],
        "time": time.time(),
    }
    if len(answered) < len(snapshots):
        total["unanswered"] = len(snapshots) - len(answered)
    return total


def _merge_priority(states: list[dict]) -> dict | None:
    """The workers' packet-thread priorities as one: real time if every worker's is now."""
    if not states:
        return None
    return {
        "mode": states[0]["mode"],
        "realtime": all(s["realtime"] for s in states),
        "raised": sum(s["raised"] for s in states),
        "demotions": sum(s["demotions"] for s in states),
        "refused": next((s["refused"] for s in states if s["refused"]), ""),
    }


def _sum_direction(directions) -> dict:
    out: dict = {"packets": 0, "bytes": 0, "drops": {}}
    for d in directions:
        out["packets"] += d["packets"]
        out["bytes"] += d["bytes"]
        for reason, n in d["drops"].items():
            out["drops"][reason] = out["drops"].get(reason, 0) + n
    return out


def worker_environment(environ=os.environ) -> dict[str, str]:
    """The daemon's environment, with the directory holding this pyflannel first on the
    workers' import path, so that ``-m pyflannel...`` finds the same copy."""
    home = str(Path(__file__).resolve().parents[3])
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != home]
    return {**environ, "PYTHONPATH": os.pathsep.join([home, *rest])}
