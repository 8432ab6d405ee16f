"""Debian guests with Debian's own kernel under QEMU, as minions on the bed
(../shared/reference/vms.md): the minion tree (testbed/rootfs.py layers) plus a cached layer
with Debian 12's ``linux-image-amd64`` and its initramfs, written into an ext4 disk image per
guest; systemd as PID 1; a virtio-net NIC on a tap device made in the bed's switch namespace
(attached to its bridge: the guest is one more host on the switch, nothing reaches the root
namespace); the serial console kept in a file and shown when a test fails. QEMU's TCG
emulation (KVM does not run guests on this machine kind): slow, so tests check behaviour,
never speed.

The guest reports on its console: ``GUEST ready kernel=<uname -r>`` when its units have
started, and ``GUEST subnet=<FLANNEL_SUBNET>`` once pyflannel wrote subnet.env (again after each
reboot). Commands run inside it through the QEMU guest agent (Debian's ``qemu-guest-agent``, on
a virtio-serial port whose host end is a unix socket in the guest's directory): ``guest-exec``
and ``guest-exec-status``, as an operator's hypervisor tooling does it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed import netns, rootfs

# Debian releases a guest can run: the suite, its kernel series, its Python.
RELEASES = {"12": ("bookworm", "6.1.", "3.11"), "13": ("trixie", "6.12.", "3.13")}
# In every guest: the kernel, its initramfs, the agent the tests run commands through, and
# the tools pyflannel's checks and the tests use (what the minion tree has, but podman).
GUEST_PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "qemu-guest-agent",
    "nftables",
    "iptables",
    "ethtool",
    "procps",
)
IMAGE_SIZE = "2G"
BOOT_TIMEOUT = 180.0  # seconds: a TCG boot takes ~20-30 s alone, more beside other guests

BED_UNIT = """[Unit]
Description=the bed's network and reports on the serial console
DefaultDependencies=no
After=systemd-udev-settle.service local-fs.target
Before=network-online.target pyflannel.service
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'ip link set lo up; ip addr add {address}/24 dev eth0; ip link set eth0 up'
[Install]
WantedBy=multi-user.target
"""
REPORT_UNIT = """[Unit]
Description=report to the bed on the serial console
After=multi-user.target pyflannel.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "GUEST ready kernel=$(uname -r)" > /dev/ttyS0; \
for i in $(seq 1 120); do if [ -f /run/flannel/subnet.env ]; then . /run/flannel/subnet.env; \
echo "GUEST subnet=$FLANNEL_SUBNET" > /dev/ttyS0; \
journalctl -u pyflannel --no-pager -o cat | grep -E "FALLBACK|ready in" | sed "s/^/GUEST log: /" \
> /dev/ttyS0; exit 0; fi; sleep 1; done; journalctl -u pyflannel --no-pager -n 40 > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
"""


class GuestError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ran:
    """What a command inside the guest did."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Ran:
        if self.returncode != 0:
            raise GuestError(
                f"in the guest: {self.command!r} exited {self.returncode}:\n"
                f"{self.stdout[-2000:]}{self.stderr[-2000:]}"
            )
        return self


def guest_layers(release: str, dependencies: Sequence[str]) -> list[Path]:
    """The cached layers (top first) of a guest running Debian ``release`` ("12", "13"):
    its stock tree and, above it, ``dependencies`` (the package's) and GUEST_PACKAGES with
    that release's own kernel (~1-2 min once per release, from the Debian archive)."""
    suite = RELEASES[release][0]
    base = rootfs.stock(suite)
    packages = sorted({*dependencies, *GUEST_PACKAGES})
    key = (base.parent.name, packages)
    return [rootfs.cached_layer(f"guest{release}", [base], packages, key), base]


class Guest:
    def __init__(
        self,
        name: str,
        layers: Sequence[Path],
        switch_ns: str,
        address: str,
        workdir: Path,
        files: Mapping[str, str] | None = None,
        memory_mb: int = 768,
        without: Sequence[str] = (),
    ):
        """``layers``: the tree, top first (the kernel layer among them); ``files``: more
        files for this guest (path inside -> text), e.g. /etc/default/pyflannel;
        ``without``: files taken out of its tree (a kernel module: as on a host that never
        loads it)."""
        self.name = name
        self.layers = list(layers)
        self.switch_ns = switch_ns
        self.address = address
        self.dir = workdir / name
        self.files = dict(files or {})
        self.memory_mb = memory_mb
        self.without = list(without)
        self.tap = f"tap{name}"[:15]
        self.console = self.dir / "console.log"
        self.agent = self.dir / "agent.sock"
        self.proc: subprocess.Popen | None = None
        self._started = 0.0
        self.boot_seconds = 0.0

    def _conf_layer(self) -> Path:
        conf = self.dir / "conf"
        units = conf / "etc/systemd/system"
        wants = units / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for unit, text in (
            ("bed-network.service", BED_UNIT.format(address=self.address)),
            ("bed-report.service", REPORT_UNIT),
        ):
            (units / unit).write_text(text)
            (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
        for inside, text in self.files.items():
            path = conf / inside.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for inside in self.without:  # an overlay whiteout: absent from the merged tree
            path = conf / inside.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        return conf

    def build(self) -> None:
        """The guest's disk: its tree written into an ext4 image (~7 s), the kernel beside."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in [self._conf_layer(), *self.layers])
        merged = self.dir / "merged"
        merged.mkdir(exist_ok=True)
        image = self.dir / "disk.img"
        script = (
            f"set -e; mount -t overlay overlay -o lowerdir={lower} {merged}; "
            f"truncate -s {IMAGE_SIZE} {image}; mkfs.ext4 -q -F -d {merged} {image}; "
            f"cp {merged}/boot/vmlinuz-* {self.dir}/vmlinuz; "
            f"cp {merged}/boot/initrd.img-* {self.dir}/initrd.img"
        )
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise GuestError(f"guest {self.name}: image not built: {proc.stderr[-2000:]}")

    def start(self) -> None:
        """Start the guest on the switch (``wait_booted`` waits for it: several guests boot
        at once that way)."""
        netns.run(["ip", "tuntap", "add", self.tap, "mode", "tap"], ns=self.switch_ns)
        netns.ip(self.switch_ns, "link", "set", self.tap, "master", "br0", "up")
        started = time.monotonic()
        console = open(self.console, "wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.switch_ns,
                "qemu-system-x86_64",
                "-m",
                str(self.memory_mb),
                "-smp",
                "1",
                "-nographic",
                "-kernel",
                str(self.dir / "vmlinuz"),
                "-initrd",
                str(self.dir / "initrd.img"),
                "-append",
                "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0",
                "-drive",
                f"file={self.dir / 'disk.img'},if=virtio,format=raw",
                "-netdev",
                f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=n0,mac={self.mac}",
                "-chardev",
                f"socket,id=agent,path={self.agent},server=on,wait=off",
                "-device",
                "virtio-serial",
                "-device",
                "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        console.close()
        self._started = started

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Until the guest reported ready and its agent answers; seconds since its start."""
        self.wait_console(r"GUEST ready kernel=\S+", timeout)
        self.wait_agent()
        self.boot_seconds = time.monotonic() - self._started
        return self.boot_seconds

    @property
    def mac(self) -> str:
        """The guest's own MAC (QEMU's default, 52:54:00:12:34:56, is every guest's: two
        guests on one switch would not reach each other)."""
        digest = hashlib.sha256(self.name.encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])

    def console_text(self) -> str:
        return self.console.read_bytes().decode(errors="replace") if self.console.exists() else ""

    def wait_console(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        """The first console line matching ``pattern`` (written after the console's first
        ``since`` characters: see ``reboot``); GuestError with the console's tail if it does
        not come within ``timeout`` or the guest ends."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.console_text(), since)
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise GuestError(f"guest {self.name} ended:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: no {pattern!r}:\n{self.console_tail()}")
            time.sleep(0.5)

    def run(self, command: str, timeout: float = 60.0) -> Ran:
        """Run a shell ``command`` inside the guest (the guest agent's ``guest-exec``), wait
        for it to end and return what it printed."""
        started = self._agent(
            "guest-exec", path="/bin/sh", arg=["-c", command], **{"capture-output": True}
        )
        deadline = time.monotonic() + timeout
        while True:
            status = self._agent("guest-exec-status", pid=started["pid"])
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: {command!r} still running after {timeout} s")
            time.sleep(0.2)

        def text(key: str) -> str:
            return base64.b64decode(status.get(key, "")).decode(errors="replace")

        return Ran(command, status.get("exitcode", -1), text("out-data"), text("err-data"))

    def _agent(self, command: str, **arguments: object) -> dict:
        """One request to the guest agent, on a connection of its own (the agent's port goes
        away and comes back when the guest reboots): a ``guest-sync`` first, so that nothing
        a half-read earlier exchange left is taken for this answer."""
        token = int(time.monotonic() * 1000) % 2**31
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(self.agent))
            reader = conn.makefile("rb")
            for request, wanted in (
                ({"execute": "guest-sync", "arguments": {"id": token}}, token),
                ({"execute": command, "arguments": arguments}, None),
            ):
                conn.sendall(json.dumps(request).encode() + b"\n")
                while True:
                    line = reader.readline()
                    if not line:
                        raise GuestError(f"guest {self.name}: the agent closed on {command}")
                    answer = json.loads(line)
                    if "error" in answer:
                        raise GuestError(f"guest {self.name}: {command}: {answer['error']}")
                    if wanted is None or answer.get("return") == wanted:
                        break
            return answer["return"]

    def wait_agent(self, timeout: float = 60.0) -> None:
        """Until the guest agent answers (it starts with the guest's units)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._agent("guest-ping")
                return
            except (OSError, GuestError, ValueError) as e:
                if time.monotonic() > deadline:
                    raise GuestError(
                        f"guest {self.name}: no agent ({e}):\n{self.console_tail()}"
                    ) from e
                time.sleep(1)

    def reboot(self, timeout: float = BOOT_TIMEOUT) -> int:
        """``systemctl reboot`` inside the guest: a new kernel, nothing of the old one's state
        kept but the disk. Returns the console position where the new boot starts (for
        ``wait_console(..., since=)``), once it reported ready again."""
        since = len(self.console_text())
        with contextlib.suppress(GuestError, OSError):  # the agent may go before it answers
            self._agent("guest-exec", path="/bin/systemctl", arg=["reboot"])
        self.wait_console(r"GUEST ready kernel=\S+", timeout, since=since)
        self.wait_agent()
        return since

    @property
    def kernel(self) -> str:
        return self.wait_console(r"GUEST ready kernel=(\S+)", 0).group(1)

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        netns.ip(self.switch_ns, "link", "del", self.tap, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
