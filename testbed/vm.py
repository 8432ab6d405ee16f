"""Debian guests with Debian's own kernel under QEMU, as minions on the bed
(../shared/reference/vms.md): the minion tree (testbed/rootfs.py layers) plus a cached layer
with Debian 12's ``linux-image-amd64`` and its initramfs, written into an ext4 disk image per
guest; systemd as PID 1; a virtio-net NIC on a tap device made in the bed's switch namespace
(attached to its bridge: the guest is one more host on the switch, nothing reaches the root
namespace); the serial console kept in a file and shown when a test fails. QEMU's TCG
emulation (KVM does not run guests on this machine kind): slow, so tests check behaviour,
never speed.

The guest reports on its console: ``GUEST ready kernel=<uname -r>`` when its units have
started, and ``GUEST subnet=<FLANNEL_SUBNET>`` once pyflannel wrote subnet.env.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed import netns, rootfs

KERNEL_PACKAGES = ("linux-image-amd64", "initramfs-tools")
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


def kernel_layer(layers: Sequence[Path]) -> Path:
    """The cached layer with Debian 12's kernel and initramfs above ``layers`` (~50 s once,
    from the Debian archive)."""
    key = ([str(p) for p in layers], KERNEL_PACKAGES)
    return rootfs.cached_layer("kernel", layers, KERNEL_PACKAGES, key)


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
        self.proc: subprocess.Popen | None = None
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

    def boot(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Start the guest on the switch and wait for its report; seconds it took."""
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
                "-no-reboot",
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
                "virtio-net-pci,netdev=n0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        console.close()
        self.wait_console(r"GUEST ready kernel=\S+", timeout)
        self.boot_seconds = time.monotonic() - started
        return self.boot_seconds

    def console_text(self) -> str:
        return self.console.read_bytes().decode(errors="replace") if self.console.exists() else ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match:
        """The first console line matching ``pattern``; GuestError with the console's tail if
        it does not come within ``timeout`` or the guest ends."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.console_text())
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise GuestError(f"guest {self.name} ended:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: no {pattern!r}:\n{self.console_tail()}")
            time.sleep(0.5)

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
