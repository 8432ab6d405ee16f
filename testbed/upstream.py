"""Upstream flanneld (../shared/anchors/flanneld-v0.20.2) on a node of the bed, for mixed
clusters and side-by-side measurements."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ENV = "PYFLANNEL_UPSTREAM_FLANNELD"
ANCHOR = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "flanneld-v0.20.2"


def upstream_flanneld() -> Path | None:
    """The upstream binary: $PYFLANNEL_UPSTREAM_FLANNELD, else the workplace's anchor."""
    path = Path(os.environ.get(ENV) or ANCHOR)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def launch_upstream(node, *args: str) -> subprocess.Popen:
    """Run upstream flanneld in the node's namespace (its log in the node's log file), without
    waiting. The node's own ``proc`` is set, so the bed stops it."""
    binary = upstream_flanneld()
    assert binary is not None, "no upstream flanneld"
    log = open(node.log_path, "ab")
    log.write(f"---- upstream {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
    log.flush()
    node.proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node.ns,
            str(binary),
            *node.bed.etcd_flags("-"),
            "-iface=eth0",
            f"-subnet-file={node.subnet_file}",
            *args,
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    return node.proc


def start_upstream(node, *args: str) -> subprocess.Popen:
    """``launch_upstream`` with a fresh subnet file, and wait for upstream to write it."""
    node.subnet_file.unlink(missing_ok=True)
    proc = launch_upstream(node, *args)
    deadline = time.monotonic() + 20
    while not node.subnet_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"upstream flanneld on {node.ns} did not start:\n{node.log()[-3000:]}"
            )
        time.sleep(0.05)
    return proc
