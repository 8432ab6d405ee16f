"""Real containers from a real runtime on a bed node: Debian's podman (CNI network backend)
with pyflannel's flannel plugin, busybox-static as the root file system (no registry needed).

How podman runs inside a namespace node here (../shared/reference/library-notes.md): a
private mount namespace with a cgroup2 mount, ``--cgroups=disabled``, cgroupfs, no events,
modest ulimits, a root/runroot per node. Podman keeps a container's network namespace in *its*
mount namespace, so one long-lived shell per node (``PodmanShell``) runs every podman command
of that node: create, exec and remove happen in one mount namespace and CNI DEL finds it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from pyflannel.cni.install import install

BUSYBOX = "/usr/bin/busybox"
CNI_DIR = "/usr/lib/cni"
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "nc", "wget", "httpd", "echo", "ls", "mkdir")
_DONE = "__pf_done__"


def available() -> str:
    """Empty if podman, the CNI plugins and busybox-static are here, else what is missing."""
    missing = [
        what
        for what, ok in (
            ("podman", shutil.which("podman")),
            ("containernetworking-plugins", Path(CNI_DIR, "bridge").exists()),
            ("busybox-static", Path(BUSYBOX).exists()),
        )
        if not ok
    ]
    return ", ".join(missing)


def make_rootfs(path: Path) -> Path:
    (path / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("proc", "sys", "dev", "etc", "tmp", "www"):
        (path / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        link = path / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (path / "www" / "index.html").write_text("hello from a pod\n")
    return path


class PodmanShell:
    """One node's podman: its own config (CNI, the flannel plugin, a conflist using the node's
    subnet.env), storage, and the one shell that runs its commands."""

    def __init__(self, node, rootfs: Path):
        self.node = node
        self.rootfs = rootfs
        base = node.dir / "podman"
        self.base = base
        for d in ("bin", "net", "root", "runroot", "flannel", "ipam"):
            (base / d).mkdir(parents=True, exist_ok=True)
        install(str(base / "bin"), None)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "cbr0",
            "plugins": [
                {
                    "type": "flannel",
                    "subnetFile": str(node.subnet_file),
                    "dataDir": str(base / "flannel"),
                    "ipam": {"dataDir": str(base / "ipam")},
                    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (base / "net" / "10-flannel.conflist").write_text(json.dumps(conflist))
        (base / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{base / "bin"}", "{CNI_DIR}"]\n'
            f'network_config_dir = "{base / "net"}"\n'
        )
        script = (
            "mount -t cgroup2 none /sys/fs/cgroup || exit 1\n"
            f'while IFS= read -r line; do eval "$line" 2>&1; echo "{_DONE} $?"; done\n'
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, "unshare", "-m", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                "CONTAINERS_CONF": str(base / "containers.conf"),
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            },
        )

    def sh(self, command: str) -> tuple[int, str]:
        """Run a shell line in the node's podman shell; (exit status, output)."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        out = []
        for line in self.proc.stdout:
            if line.startswith(_DONE):
                return int(line.split()[1]), "".join(out)
            out.append(line)
        raise RuntimeError(f"podman shell on {self.node.ns} ended:\n{''.join(out)}")

    def podman(self, *args: str) -> tuple[int, str]:
        b = self.base
        common = (
            f"podman --root {b / 'root'} --runroot {b / 'runroot'} --cgroup-manager=cgroupfs "
            "--events-backend=none"
        )
        return self.sh(f"{common} {' '.join(args)}")

    def run(self, name: str, *extra: str, command: str = "sleep 600") -> str:
        """Start a detached container on the flannel network; its IPv4 address."""
        code, out = self.podman(
            "run -d --cgroups=disabled --ulimit nofile=1024:1024 --ulimit nproc=4096:4096",
            f"--network cbr0 --name {name}",
            *extra,
            f"--rootfs {self.rootfs}",
            command,
        )
        assert code == 0, out
        return self.address(name)

    def address(self, name: str) -> str:
        code, out = self.exec(name, "ip -4 -o addr show eth0")
        assert code == 0, out
        return out.split("inet ")[1].split("/")[0]

    def exec(self, name: str, command: str) -> tuple[int, str]:
        return self.podman(f"exec {name} sh -c '{command}'")

    def remove(self, name: str) -> tuple[int, str]:
        return self.podman(f"rm -f -t 0 {name}")

    def leased_addresses(self) -> list[str]:
        """Addresses host-local still holds for this node's containers."""
        ipam = self.base / "ipam" / "cbr0"
        return (
            sorted(p.name for p in ipam.iterdir() if p.name[0].isdigit()) if ipam.exists() else []
        )

    def close(self) -> None:
        try:
            self.podman("rm -f -a -t 0")
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
