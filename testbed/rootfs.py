"""Debian root file systems (12 unless told; 13 for the VM tests) for booted minions and guests
(../shared/reference/minions.md), in layers:

- **stock**: ``debootstrap --variant=minbase`` with systemd, built once and cached, keyed on its
  package list (~55 s). What a fresh Debian 12 machine has, as far as pyflannel cares.
- **minion**: stock plus the Debian packages pyflannel's .deb depends on and the tools the tests
  use inside minions (podman, nftables, ...), installed with apt from the archive; cached,
  keyed on both lists.
- **session**: minion plus the pyflannel package under test, installed with apt (offline: its
  dependencies are already there); an overlay upper directory made per test session.

Layers are overlayfs directories stacked by ``lowerdir=upper:...:stock``, never copied. Work
inside a tree (apt, dpkg) runs chrooted in a private mount namespace, so every mount vanishes
with the command. Only building the cache uses the network (the Debian archive, as the host's
apt does); booted minions never reach outside the bed.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"
CACHE = Path(os.environ.get("PYFLANNEL_MINION_CACHE", "/var/cache/pyflannel/minions"))
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# A stock machine: what debootstrap's minbase lacks for booting with systemd and being reached.
STOCK_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "python3", "iputils-ping")
# Inside minions for the tests, besides pyflannel's own dependencies: a container runtime with
# the CNI plugins it delegates to, a busybox rootfs for containers, the tools of the checks.
TOOL_PACKAGES = (
    "podman",
    "crun",
    "conmon",
    "containernetworking-plugins",
    "busybox-static",
    "nftables",
    "iptables",
    "procps",
    "ethtool",
)
NO_SERVICES = "#!/bin/sh\n# No service starts while a tree is being built.\nexit 101\n"


class RootfsError(RuntimeError):
    pass


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _recipe(function) -> str:
    """A layer's key includes how it is prepared: changing that rebuilds it."""
    return inspect.getsource(function)


def _mirror() -> str:
    """The Debian mirror the host's apt uses."""
    if HOST_SOURCES.exists():
        for line in HOST_SOURCES.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_in_tree(
    layers: Sequence[Path],
    upper: Path,
    command: str,
    timeout: float = 900,
    network: bool = False,
) -> subprocess.CompletedProcess:
    """Run a shell ``command`` chrooted in the tree ``layers`` (top first) topped by the
    writable ``upper``, in a private mount namespace (its mounts vanish with it). With
    ``network``, the host's resolv.conf is visible (building the cache: apt reaches the
    archive); tests never need it."""
    work = upper.parent / f".{upper.name}.work"
    merged = upper.parent / f".{upper.name}.merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in layers)
    resolv = (
        'rm -f "$R/etc/resolv.conf"; cp /etc/resolv.conf "$R/etc/resolv.conf"; ' if network else ""
    )
    script = (
        f"set -e; R={shlex.quote(str(merged))}; "
        f'mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} "$R"; '
        'mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"; '
        'mount --rbind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/run"; mount -t tmpfs tmpfs "$R/tmp"; '
        f"{resolv}"
        f'exec chroot "$R" /bin/sh -c {shlex.quote(command)}'
    )
    try:
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "DEBIAN_FRONTEND": "noninteractive",
                "LC_ALL": "C",
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if merged.exists():
            merged.rmdir()


def _apt_install(layers: Sequence[Path], upper: Path, what: Sequence[str], network: bool) -> None:
    """apt-get install ``what`` into ``upper`` (above ``layers``), no service started."""
    policy = upper / "usr/sbin/policy-rc.d"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(NO_SERVICES)
    policy.chmod(0o755)
    update = "apt-get update -qq && " if network else ""
    args = " ".join(shlex.quote(w) for w in what)
    proc = run_in_tree(
        layers,
        upper,
        f"{update}apt-get install -y -qq --no-install-recommends {args} && apt-get clean",
        network=network,
    )
    policy.unlink()
    if proc.returncode != 0:
        raise RootfsError(
            f"apt-get install {args} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )


def stock(suite: str = SUITE) -> Path:
    """The cached stock Debian tree of ``suite`` (Debian 12 unless told: the VM tests boot
    Debian 13 too), built on first use (~1 min, needs the archive)."""
    mirror = _mirror()
    home = CACHE / f"stock-{_key(suite, mirror, STOCK_PACKAGES, _recipe(_prepare_for_boot))}"
    tree = home / "rootfs"
    with _locked(CACHE / ".lock"):
        if (home / "ready").exists():
            return tree
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        started = time.monotonic()
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(STOCK_PACKAGES)}",
                suite,
                str(tree),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if proc.returncode != 0:
            raise RootfsError(f"debootstrap failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        _prepare_for_boot(tree, suite)
        (home / "ready").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return tree


def _prepare_for_boot(tree: Path, suite: str) -> None:
    """Each minion gets its own machine ID and hostname (from nspawn's --uuid and
    --machine); the archive is the host's, with its updates and security suites (of
    ``suite``)."""
    (tree / "etc/machine-id").write_text("")
    (tree / "etc/hostname").unlink(missing_ok=True)
    dbus_id = tree / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    if HOST_SOURCES.exists():
        (tree / "etc/apt/sources.list").unlink(missing_ok=True)
        sources = HOST_SOURCES.read_text().replace(SUITE, suite)
        (tree / "etc/apt/sources.list.d/debian.sources").write_text(sources)
    # Nothing of the minion should reach outside the bed on its own.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        link = tree / "etc/systemd/system" / timer
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def _prepare_tools(upper: Path) -> None:
    """Podman's storage on the minion's overlay root needs the vfs driver; its auto-update
    (pulling images from registries) has nothing to do in a minion."""
    conf = upper / "etc/containers/storage.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n'
        'graphroot = "/var/lib/containers/storage"\n'
    )
    for unit in ("podman-auto-update.service", "podman-auto-update.timer"):
        link = upper / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def package_dependencies(deb: Path) -> list[str]:
    """The Debian packages a .deb depends on or recommends (names only)."""
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends", "Recommends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set()
    for line in fields.splitlines():
        _, _, value = line.partition(":")
        for item in value.split(","):
            name = item.split("|")[0].split("(")[0].strip().split(":")[0]
            if name:
                names.add(name)
    return sorted(names)


def cached_layer(
    name: str,
    layers: Sequence[Path],
    packages: Sequence[str],
    key: Sequence[object],
    then: Callable[[Path], None] | None = None,
) -> Path:
    """A cached layer above ``layers``: ``packages`` installed with apt from the archive
    (and ``then`` run on it), built once per ``key`` under ``<CACHE>/<name>-<key>``."""
    home = CACHE / f"{name}-{_key(*key)}"
    upper = home / "layer"
    with _locked(CACHE / ".lock"):
        if not (home / "ready").exists():
            shutil.rmtree(home, ignore_errors=True)
            started = time.monotonic()
            _apt_install(layers, upper, packages, network=True)
            if then is not None:
                then(upper)
            (home / "ready").write_text(
                f"built in {time.monotonic() - started:.0f} s: {' '.join(packages)}\n"
            )
    return upper


def minion(dependencies: Sequence[str]) -> list[Path]:
    """The cached minion layers (top first): stock plus ``dependencies`` and the tools."""
    base = stock()
    packages = sorted({*dependencies, *TOOL_PACKAGES})
    key = (base.parent.name, packages, _recipe(_prepare_tools))
    return [cached_layer("minion", [base], packages, key, then=_prepare_tools), base]


def with_package(layers: Sequence[Path], deb: Path, upper: Path) -> list[Path]:
    """A session layer: ``layers`` plus the package ``deb`` installed with apt (offline),
    enabled as its maintainer scripts enable it. The caller removes ``upper``."""
    upper.mkdir(parents=True, exist_ok=True)
    drop = upper / "root" / deb.name
    drop.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, drop)
    _apt_install(layers, upper, [f"/root/{deb.name}"], network=False)
    drop.unlink()
    return [upper, *layers]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
