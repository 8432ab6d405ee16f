"""A slow disk for one process, for real: a cgroup-v1 blkio group whose writes to the device
holding a directory are throttled to a few IOPS. Every fsync the process issues waits for
the throttle, so etcd's own WAL fsync and backend commit histograms see a slow disk (no
fake figures). Only the processes put in the group are slowed; the group is removed after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")


def available() -> bool:
    return (BLKIO / "blkio.throttle.write_iops_device").exists() and os.access(BLKIO, os.W_OK)


@contextlib.contextmanager
def slow_writes(pid: int, directory: str | Path, iops: int) -> Iterator[None]:
    """Throttle the writes of process ``pid`` to the device holding ``directory``."""
    dev = os.stat(directory).st_dev
    group = BLKIO / f"pf{os.getpid()}-slowdisk"
    group.mkdir(exist_ok=True)
    try:
        (group / "blkio.throttle.write_iops_device").write_text(
            f"{os.major(dev)}:{os.minor(dev)} {iops}\n"
        )
        (group / "cgroup.procs").write_text(f"{pid}\n")
        yield
    finally:
        for task in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                (BLKIO / "cgroup.procs").write_text(f"{task}\n")  # back to the root group
        group.rmdir()
