"""One daemon per network on a host, and a record saying where each one is.

Several networks may share a host (one daemon per ``--etcd-prefix``, each with its own subnet
file, as upstream documents). Two daemons for the *same* network, or two networks writing one
subnet file, would take over each other's lease and entries: each daemon therefore holds two
``flock`` locks for its whole life, both beside its subnet file:

- ``<subnet file>.lock``: one daemon per subnet file. It also holds this instance's record
  (JSON: pid, etcd prefix, subnet file, health endpoint), which ``pyflannel status`` reads to
  find the daemon's endpoint, and which names the holder when a second daemon is refused;
- ``.pyflannel-<netns>-<prefix hash>.lock``: one daemon per network and network namespace
  (the test bed's nodes are namespaces sharing one file system).

The kernel releases a lock when its holder dies, also after ``kill -9``: a stale record never
blocks a start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pyflannel.errors import FlannelError

log = logging.getLogger(__name__)


class InstanceConflict(FlannelError):
    """Another daemon already runs this network, or uses this subnet file, on this host."""


@dataclass(frozen=True)
class InstanceRecord:
    pid: int
    etcd_prefix: str
    subnet_file: str
    healthz: str = ""  # "ip:port" of the health endpoint, empty while off or not yet up

    def describe(self) -> str:
        where = f", health endpoint {self.healthz}" if self.healthz else ""
        return f"pid {self.pid}, network {self.etcd_prefix}, subnet file {self.subnet_file}{where}"


def record_path(subnet_file: str | os.PathLike) -> Path:
    return Path(f"{subnet_file}.lock")


def network_lock_path(subnet_file: str | os.PathLike, etcd_prefix: str) -> Path:
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    digest = hashlib.sha256(etcd_prefix.encode()).hexdigest()[:12]
    return Path(subnet_file).parent / f".pyflannel-{netns}-{digest}.lock"


def read_record(path: Path) -> InstanceRecord | None:
    """The record in a lock file, if it parses (it may be stale: check ``is_held``)."""
    try:
        doc = json.loads(path.read_text())
        return InstanceRecord(
            pid=int(doc["pid"]),
            etcd_prefix=str(doc["etcd_prefix"]),
            subnet_file=str(doc["subnet_file"]),
            healthz=str(doc.get("healthz", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_held(path: Path) -> bool:
    """Is the lock at ``path`` held by a live process?"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running_instance(subnet_file: str | os.PathLike) -> InstanceRecord | None:
    """The live daemon using ``subnet_file``, from its record, or None."""
    path = record_path(subnet_file)
    return read_record(path) if is_held(path) else None


def instances_beside(subnet_file: str | os.PathLike) -> list[InstanceRecord]:
    """Live daemons whose subnet files are in the same directory (other networks, usually)."""
    found = []
    for path in sorted(Path(subnet_file).parent.glob("*.lock")):
        record = read_record(path)
        if record is not None and is_held(path):
            found.append(record)
    return found


class Instance:
    """The locks of this daemon; ``publish`` rewrites its record (e.g. with the endpoint)."""

    def __init__(self, subnet_file: str, etcd_prefix: str):
        self.record = InstanceRecord(os.getpid(), etcd_prefix, subnet_file)
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Take both locks, or raise InstanceConflict naming the daemon that holds one."""
        subnet_file = self.record.subnet_file
        Path(subnet_file).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        record = record_path(subnet_file)
        network = network_lock_path(subnet_file, self.record.etcd_prefix)
        try:
            self._lock(network)
        except BlockingIOError:
            prefix = self.record.etcd_prefix
            other = next(
                (r for r in instances_beside(subnet_file) if r.etcd_prefix == prefix), None
            )
            raise InstanceConflict(self._conflict(other, same_network=True)) from None
        try:
            self._lock(record)
        except BlockingIOError:
            self.release()
            raise InstanceConflict(self._conflict(read_record(record))) from None
        self.publish()

    def _conflict(self, other: InstanceRecord | None, same_network: bool = False) -> str:
        mine = self.record
        if same_network or other is None or other.etcd_prefix == mine.etcd_prefix:
            who = f" ({other.describe()})" if other else ""
            return (
                f"another pyflannel already runs network {mine.etcd_prefix} on this host{who}; "
                "two daemons for one network would take over each other's lease and kernel "
                "entries. Stop the other one first (systemctl status pyflannel)"
            )
        return (
            f"subnet file {mine.subnet_file} is in use by the daemon of another network "
            f"({other.describe()}); give each network its own --subnet-file"
        )

    def _lock(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def publish(self, healthz: str | None = None) -> None:
        if healthz is not None:
            self.record = InstanceRecord(**{**asdict(self.record), "healthz": healthz})
        if not self._fds:
            return
        fd = self._fds[-1]  # the record lives in the subnet file's lock
        data = json.dumps(asdict(self.record)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Unlock (the files stay: removing a lock file another process opened is racy)."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
