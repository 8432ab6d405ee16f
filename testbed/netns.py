"""Network namespaces and commands run inside them (iproute2 via subprocess).

Safety (../shared/testbed.md): everything a bed makes lives in namespaces named with a per-run
prefix ``pf<pid>-`` (a bed's: ``pf<pid>x<n>-``); nothing is ever added to the root namespace; ``sweep()`` removes only
leftovers of runs whose process is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence

NAME_RE = re.compile(r"^pf(\d+)(?:x\d+|[a-z])?-")  # pf<pid>-, pf<pid>x<bed>-, pf<pid><tag>-


class CommandError(RuntimeError):
    pass


def run(
    cmd: Sequence[str], ns: str | None = None, check: bool = True, timeout: float = 30, **kw
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (inside ``ns`` if given); raise CommandError with its output on failure."""
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise CommandError(
            f"{' '.join(full)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def ip(ns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *args], ns=ns, check=check)


def add_veth(ns: str, name: str, peer_ns: str, peer_name: str, mtu: int) -> None:
    """A veth pair: ``name`` in ``ns``, ``peer_name`` in ``peer_ns``, both with ``mtu``."""
    peer = ["peer", "name", peer_name, "netns", peer_ns, "mtu", str(mtu)]
    ip(ns, "link", "add", name, "mtu", str(mtu), "type", "veth", *peer)


def ip_json(ns: str | None, *args: str) -> list[dict]:
    import json

    out = run(["ip", "-j", *args], ns=ns).stdout.strip()
    return json.loads(out) if out else []


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def create(name: str) -> None:
    """A namespace with loopback up, and without IPv6 duplicate address detection: every
    address on the bed is unique by construction, and DAD would keep each new link-local
    address tentative for a second or two, delaying the first IPv6 packets of a test."""
    run(["ip", "netns", "add", name])
    ip(name, "link", "set", "lo", "up")
    for scope in ("all", "default"):
        sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", "0")


def kill_processes_in(name: str, sig: int = signal.SIGKILL) -> list[int]:
    """End every process living in namespace ``name`` (by PID, as ``ip netns pids`` lists)."""
    out = run(["ip", "netns", "pids", name], check=False).stdout
    pids = [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def delete(name: str) -> None:
    """Remove a namespace and whatever still runs in it."""
    if kill_processes_in(name):
        time.sleep(0.1)
    run(["ip", "netns", "del", name], check=False)


def sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    run(["sh", "-c", f"echo {value} > {path}"], ns=ns)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Delete namespaces left by earlier runs of the project whose process is gone."""
    removed = []
    for name in list_namespaces():
        m = NAME_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            delete(name)
            removed.append(name)
    return removed
