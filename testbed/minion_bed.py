"""The test bed with booted Debian minions as its hosts: each host namespace runs a minion
(testbed/minion.py) with the pyflannel package installed by apt, and pyflannel runs as
pyflannel.service under the minion's systemd, configured by /etc/default/pyflannel, exactly as
on an operator's node. etcd, the switch and the pods are the bed's (testbed/bed.py).

    with MinionBed(hosts=3, layers=session_layers) as bed:
        bed.put_config(config)
        bed.boot()                    # pyflannel starts at boot: the package enabled it
        bed.nodes[0].ping(bed.nodes[1].pod_ip)

Each minion's eth0 keeps its MAC and its machine ID across reboots (``reboot()`` also wipes
its namespace's kernel state, as a real reboot does).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyflannel.subnet.env_file import parse_env
from testbed import netns
from testbed.bed import Node, TestBed
from testbed.minion import Minion, MinionError

SERVICE = "pyflannel.service"
DEFAULT_FILE = "/etc/default/pyflannel"
SUBNET_ENV = "/run/flannel/subnet.env"


class MinionNode(Node):
    """A bed host whose pyflannel is the minion's pyflannel.service."""

    minion: Minion

    @property
    def mac(self) -> str:
        return f"02:00:c6:33:64:{self.index:02x}"

    def configure(self, **variables: str) -> None:
        """/etc/default/pyflannel: the bed's etcd and eth0, plus ``variables``
        (FLANNELD_* names without the prefix, e.g. ``IP_MASQ="true"``)."""
        env = {"ETCD_ENDPOINTS": self.bed.etcd.url, "IFACE": "eth0", **variables}
        self.minion.write(
            DEFAULT_FILE, "".join(f"FLANNELD_{k}={v}\n" for k, v in env.items() if v is not None)
        )

    # -- the service ---------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120):
        return self.minion.systemctl(*args, check=check, timeout=timeout)

    def service(self, *props: str) -> dict[str, str]:
        return self.minion.unit(SERVICE, *props)

    @property
    def running(self) -> bool:
        return self.minion.running and self.service("ActiveState")["ActiveState"] == "active"

    def start(self, *args: str, env=None, private_run: bool = False) -> MinionNode:
        assert not args and not env, "a minion's pyflannel takes its options from /etc/default"
        self.systemctl("start", SERVICE)
        return self

    def stop(self, sig=None, timeout: float = 10.0):
        """``systemctl stop`` (its exit status); nothing when the minion is down."""
        if not self.minion.running:
            return None
        return self.systemctl("stop", SERVICE, check=False).returncode

    @property
    def main_pid(self) -> int:
        """The daemon's PID inside the minion (0 when it is not running)."""
        return int(self.service("MainPID")["MainPID"])

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        state = self.service("ActiveState", "Result")
        if state["ActiveState"] != "active":
            raise MinionError(f"{self.ns}: pyflannel is {state}:\n{self.log()[-3000:]}")
        return self.subnet_env()

    def subnet_env(self) -> dict[str, str]:
        return parse_env(self.minion.exec("cat", SUBNET_ENV).stdout)

    def has_subnet_env(self) -> bool:
        return self.minion.exec("test", "-e", SUBNET_ENV, check=False).returncode == 0

    def log(self) -> str:
        return self.minion.journal(SERVICE) if self.minion.pid1 else ""

    # -- operating it as an operator would, inside the minion ---------------------------

    def endpoint(self, path: str, port: int | None = None) -> str:
        url = f"http://127.0.0.1:{port or 8471}{path}"
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
        return self.minion.exec("python3", "-c", code).stdout

    def status_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.minion.exec("pyflannel", "status", *args, check=False, timeout=timeout)

    def doctor(self, *args: str, timeout: float = 120) -> tuple[int, dict[str, dict]]:
        proc = self.minion.exec(
            "pyflannel", "doctor", "--json", *args, check=False, timeout=timeout
        )
        return proc.returncode, {f["check"]: f for f in json.loads(proc.stdout)}

    def reboot(self) -> float:
        """A clean reboot of the machine: systemd stops everything, the kernel state of its
        namespace is gone (a new namespace, same MAC and address), it boots again."""
        self.minion.poweroff()
        self.bed.rebuild_host(self)
        return self.minion.boot()

    def crash_and_boot(self) -> float:
        """Power cut and boot: nothing stops cleanly."""
        self.minion.crash()
        self.bed.rebuild_host(self)
        return self.minion.boot()


class MinionBed(TestBed):
    node_class = MinionNode
    nodes: list[MinionNode]  # type: ignore[assignment]

    def __init__(self, hosts: int, layers: Sequence[Path], mtu: int = 1500, **kw):
        super().__init__(hosts=hosts, mtu=mtu, **kw)
        self.layers = list(layers)
        for node in self.nodes:
            # A stable machine ID per minion (its lease's owner fingerprint uses it).
            uuid = hashlib.sha256(f"{self.prefix}{node.index}".encode()).hexdigest()[:32]
            node.minion = Minion(
                f"{self.prefix}m{node.index}",
                self.layers,
                node.ns,
                self.workdir / f"m{node.index}",
                uuid,
            )

    def attach_host(self, node: Node, mac: str | None = None) -> None:
        assert isinstance(node, MinionNode)
        super().attach_host(node, mac or node.mac)

    def rebuild_host(self, node: MinionNode) -> None:
        """A new host namespace for ``node`` (the old one's kernel state gone): same eth0
        address and MAC; its pod, if it had one, must be added again."""
        if node.pod_ns in netns.list_namespaces():
            netns.delete(node.pod_ns)
        # The switch's end first: a deleted namespace's veth goes away only later, and the
        # new one takes its name.
        netns.ip(self.lan, "link", "del", f"v{node.index}", check=False)
        netns.delete(node.ns)
        self._namespaces.remove(node.ns)
        self.attach_host(node)

    def boot(
        self, nodes: Sequence[MinionNode] | None = None, configure: bool = True
    ) -> list[float]:
        """Boot minions (all by default) in parallel, each configured for the bed first;
        the seconds each took to be up (pyflannel's start at boot included)."""
        nodes = list(nodes or self.nodes)
        for node in nodes:
            node.minion.mount()
            if configure:
                node.configure()
        with ThreadPoolExecutor(len(nodes)) as pool:
            return list(pool.map(lambda n: n.minion.boot(), nodes))

    def journals(self) -> str:
        """Every minion's journal of this boot (for a failed test's report)."""
        out = []
        for node in self.nodes:
            if node.minion.running:
                out.append(f"==== {node.minion.name} journal\n{node.minion.journal()[-8000:]}")
            out.append(f"==== {node.minion.name} console\n{node.minion.console_tail(30)}")
        return "\n".join(out)

    def close(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda n: _quietly(n.minion.close), self.nodes))
        super().close()


def _quietly(call) -> None:
    try:
        call()
    except Exception as e:  # teardown goes on for the others
        print(f"teardown: {e}", file=sys.stderr)
