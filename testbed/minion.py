"""A booted Debian minion: systemd as PID 1 under systemd-nspawn, in a network namespace of
the bed (../shared/reference/minions.md has the measured facts this follows).

The root is an overlay of the cached layers (testbed/rootfs.py) with an upper directory of
the minion's own, kept across its reboots (its machine ID, /etc, installed packages survive;
/run and the kernel state do not, as on a real machine). Commands run inside with nsenter into
PID 1's namespaces. ``close()`` powers it off and removes its overlay, cgroups and files, also
after errors.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

CGROUPS = ("systemd", "unified", "memory", "pids")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROPAGATE = Path("/run/systemd/nspawn/propagate")
BOOT_TIMEOUT = 60.0


class MinionError(RuntimeError):
    pass


class Minion:
    def __init__(self, name: str, layers: Sequence[Path], netns: str, workdir: Path, uuid: str):
        """``name``: the machine (and hostname), also its cgroups' name: carries the bed's
        prefix. ``uuid``: 32 hex digits, its machine ID (the same at every boot)."""
        self.name = name
        self.layers = list(layers)
        self.netns = netns
        self.dir = workdir
        self.upper = workdir / "upper"
        self.work = workdir / "work"
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        self.uuid = uuid
        self.nspawn: subprocess.Popen | None = None
        self.pid1 = 0  # the host PID of the minion's systemd
        self.boots = 0

    # -- its file system (writable from the host before and while it runs) --------------

    def mount(self) -> None:
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(self.root):
            lower = ":".join(str(p) for p in self.layers)
            _run(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={lower},upperdir={self.upper},workdir={self.work}",
                    str(self.root),
                ]
            )

    def path(self, inside: str) -> Path:
        """A path of the minion's root file system, seen from the host."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # -- booting ------------------------------------------------------------------------

    def boot(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Boot and wait until systemd says the system is up; the seconds it took."""
        assert self.nspawn is None or self.nspawn.poll() is not None, f"{self.name} is running"
        self.mount()
        for c in CGROUPS:
            (CGROUP_ROOT / c / self.name).mkdir(exist_ok=True)
        join = " ".join(
            f"echo $$ > {CGROUP_ROOT / c / self.name / 'cgroup.procs'};" for c in CGROUPS
        )
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            "-D",
            str(self.root),
            f"--machine={self.name}",
            f"--uuid={self.uuid}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--capability=CAP_NET_ADMIN",
            "--bind=/dev/net/tun",
        ]
        started = time.monotonic()
        console = open(self.console, "ab")
        console.write(f"\n---- boot {self.boots + 1} {time.strftime('%H:%M:%S')}\n".encode())
        console.flush()
        # From a cgroup of its own: from the root cgroup nspawn would put its payload and
        # supervisor cgroups at the top level.
        # /proc/sys/net writable, as on a real machine (sysctls of the minion's own network
        # namespace: the CNI bridge plugin and container runtimes write there).
        self.nspawn = subprocess.Popen(
            [
                "env",
                "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network",
                "sh",
                "-c",
                f"{join} exec {shlex.join(nspawn)}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
        )
        console.close()
        self.boots += 1
        self.pid1 = self._find_pid1(started + timeout)
        while True:  # systemctl needs the manager's private socket
            state = self.exec(
                "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
            )
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > started + timeout:
                raise MinionError(
                    f"{self.name} did not boot: {state.stdout}{state.stderr}\n{self.console_tail()}"
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def _find_pid1(self, deadline: float) -> int:
        """The host PID of nspawn's descendant whose PID in its own namespace is 1, once its
        systemd listens on its private socket (systemctl needs it)."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise MinionError(f"systemd-nspawn for {self.name} exited:\n{self.console_tail()}")
            for pid in _descendants(self.nspawn.pid):
                if (
                    _namespace_pid(pid) == 1
                    and Path(f"/proc/{pid}/root/run/systemd/private").exists()
                ):
                    return pid
            time.sleep(0.02)
        raise MinionError(f"{self.name}: no systemd came up:\n{self.console_tail()}")

    @property
    def running(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    def poweroff(self, timeout: float = 30.0) -> None:
        """A clean shutdown (systemd stops every unit), as `poweroff` inside would."""
        if not self.running:
            return
        assert self.nspawn is not None
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait(10)
        self._after_exit()

    def crash(self) -> None:
        """The machine dies at once (power cut): nothing inside gets to stop."""
        if self.running:
            assert self.nspawn is not None
            self.nspawn.kill()
            self.nspawn.wait(10)
            if self.pid1:
                _kill_cgroup(self.name)
        self._after_exit()

    def _after_exit(self) -> None:
        self.pid1 = 0
        _remove_cgroups(self.name)
        _run(["rm", "-rf", str(PROPAGATE / self.name)], check=False)

    def close(self) -> None:
        try:
            self.poweroff(timeout=15)
        finally:
            self.crash()
            if os.path.ismount(self.root):
                _run(["umount", "-l", str(self.root)], check=False)

    # -- inside it ----------------------------------------------------------------------

    def exec(
        self, *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside (all of PID 1's namespaces), with the host's capabilities."""
        if not self.pid1:
            raise MinionError(f"{self.name} is not running")
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL": "C",
                "SYSTEMD_PAGER": "",
                "TERM": "dumb",
            },
        )
        if check and proc.returncode != 0:
            raise MinionError(
                f"{self.name}: {shlex.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sh(
        self, script: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return self.exec("sh", "-c", script, check=check, timeout=timeout)

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return self.exec("systemctl", *args, check=check, timeout=timeout)

    def unit(self, unit: str, *props: str) -> dict[str, str]:
        """Properties of a unit (``systemctl show``)."""
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, since_boot: bool = True) -> str:
        args = ["journalctl", "--no-pager", "-o", "short-precise"]
        if unit:
            args += ["-u", unit]
        if since_boot:
            args.append("-b")
        return self.exec(*args, check=False).stdout

    def memory_bytes(self) -> int:
        return int((CGROUP_ROOT / "memory" / self.name / "memory.usage_in_bytes").read_text())

    def console_tail(self, lines: int = 40) -> str:
        if not self.console.exists():
            return ""
        return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])


def _namespace_pid(pid: int) -> int:
    """A process's PID in its innermost PID namespace (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def _kill_cgroup(name: str) -> None:
    """SIGKILL whatever is left in the minion's cgroups (a crashed machine's processes)."""
    for c in CGROUPS:
        top = CGROUP_ROOT / c / name
        if not top.exists():
            continue
        for procs in top.rglob("cgroup.procs"):
            try:
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _remove_cgroups(name: str) -> None:
    for c in CGROUPS:
        top = CGROUP_ROOT / c / name
        if not top.exists():
            continue
        for _ in range(50):
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            try:
                for d in [*dirs, top]:
                    d.rmdir()
                break
            except OSError:
                _kill_cgroup(name)
                time.sleep(0.1)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise MinionError(f"{shlex.join(cmd)}: {proc.stderr.strip()}")
    return proc
