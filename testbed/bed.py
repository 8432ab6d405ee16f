"""Several "minions" on one machine: etcd and N hosts in network namespaces on a bridge.

Layout (../shared/testbed.md): namespace ``<prefix>lan`` holds bridge ``br0`` (the switch,
198.51.100.254/24) and etcd on 198.51.100.254:2379; host ``i`` is namespace ``<prefix>h<i>``
with ``eth0`` = 198.51.100.<i>/24 and fd00:198:51:100::<i>/64, a veth created directly between the two namespaces so no
end ever exists in the root namespace. Pods are namespaces ``<prefix>h<i>p`` behind a
``cni0`` bridge holding the first address of the node's subnet, like the CNI bridge plugin.

Used by the tests, ``bench/`` and the demo. ``close()`` removes everything, also after errors.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_interface
from pathlib import Path

from pyflannel.ops.instance import running_instance
from pyflannel.subnet.env_file import parse_env
from testbed import netns
from testbed.etcd import EtcdCluster, EtcdServer

UNDERLAY = "198.51.100"
ETCD_IP = f"{UNDERLAY}.254"
UNDERLAY6 = "fd00:198:51:100"  # every host's eth0 also has <UNDERLAY6>::<i>/64 (dual-stack tests)
DEFAULT_PREFIX = "/coreos.com/network"
NODES_SUBNET_MAX = "10.1.199.0"  # 10.1.200.0-10.1.255.0: tests' leases of nodes that do not exist
VXLAN_CONFIG = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}

_beds = itertools.count()
PRIVATE_RUN = 'mkdir -p /run/wireguard && mount -t tmpfs tmpfs /run/wireguard && exec "$@"'


@dataclass
class PingResult:
    sent: int
    received: int
    rtts: list[float]
    output: str

    @property
    def lost(self) -> int:
        return self.sent - self.received


def parse_ping(output: str) -> PingResult:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", output)]
    return PingResult(sent, received, rtts, output)


class Node:
    """One host namespace and the pyflannel daemon that may run in it."""

    def __init__(self, bed: TestBed, index: int, network: str = ""):
        """``network``: a tag for a second daemon on the same host (another network, with
        its own subnet file, log, pod and pod bridge); see ``TestBed.second_network``."""
        self.bed = bed
        self.index = index
        self.network = network
        self.ns = f"{bed.prefix}h{index}"
        self.pod_ns = f"{bed.prefix}h{index}{network}p"
        self.bridge = f"cni{network}" if network else "cni0"
        self.underlay_ip = IPv4Address(f"{UNDERLAY}.{index}")
        self.iface = "eth0"  # the daemon's --iface
        self.underlay_ip6 = IPv6Address(f"{UNDERLAY6}::{index}")
        self.dir = bed.workdir / f"h{index}{network}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Like /run/flannel/ on a real host: every network's subnet file in one directory.
        host_dir = bed.workdir / f"h{index}"
        host_dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = host_dir / (f"subnet-{network}.env" if network else "subnet.env")
        self.log_path = self.dir / "daemon.log"
        self.key_file = self.dir / "wgkey"  # WIREGUARD_KEY_FILE of the node's daemon
        self.proc: subprocess.Popen | None = None
        self.pod_ip: IPv4Address | None = None
        self.pod_ip6: IPv6Address | None = None

    # -- the daemon ------------------------------------------------------------------------

    def daemon_command(self, *args: str) -> list[str]:
        return [
            self.bed.python,
            "-m",
            "pyflannel",
            "run",
            *self.bed.etcd_flags(),
            f"--iface={self.iface}",
            f"--subnet-file={self.subnet_file}",
            *args,
        ]

    def start(
        self, *args: str, env: dict[str, str] | None = None, private_run: bool = False
    ) -> Node:
        """Start the daemon. ``private_run``: in a mount namespace of its own with a tmpfs on
        /run/wireguard, so each node's wireguard-go has its own socket directory (a real host
        has one; the bed's nodes share a filesystem). Its WireGuard key is in the node's
        directory (WIREGUARD_KEY_FILE) either way."""
        assert not self.running, f"daemon on {self.ns} already running"
        log = open(self.log_path, "ab")
        log.write(f"---- start {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        log.flush()
        command = self.daemon_command(*args)
        if private_run:
            command = ["unshare", "-m", "sh", "-c", PRIVATE_RUN, "sh", *command]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *command],
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "WIREGUARD_KEY_FILE": str(self.key_file),
                **(env or {}),
            },
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the daemon and wait for it; its exit status (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def children(self) -> list[int]:
        """The daemon's child processes started from its main thread (its UDP data-path
        workers)."""
        text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [int(pid) for pid in text.split()]

    def all_children(self) -> list[int]:
        """Child processes of any of the daemon's threads (also wireguard-go, started from a
        worker thread, and any short-lived tool run at that moment)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except OSError:
                continue  # a thread that just ended
        return pids

    def endpoint(self, path: str, port: int | None = None) -> str:
        """A page of the daemon's health endpoint, fetched inside the host's namespace (at
        the port its instance record gives, unless told)."""
        if port is None:
            record = running_instance(self.subnet_file)
            port = int(record.healthz.rpartition(":")[2]) if record and record.healthz else 8471
        code = (
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}{path}', timeout=10).read().decode())"
        )
        return netns.run([sys.executable, "-c", code], ns=self.ns).stdout

    def status(self, port: int | None = None) -> dict:
        """The daemon's /status document."""
        return json.loads(self.endpoint("/status", port))

    def status_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``pyflannel status`` run on this host, as an operator would, pointed at the bed."""
        return self.cli("status", *args, timeout=timeout)

    def trace_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``pyflannel trace`` run on this host."""
        return self.cli("trace", *args, timeout=timeout)

    def cli(self, command: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A ``pyflannel`` command run on this host, pointed at the bed's etcd and this
        node's subnet file."""
        return netns.run(
            [
                sys.executable,
                "-m",
                "pyflannel",
                command,
                *self.bed.etcd_flags(),
                f"--subnet-file={self.subnet_file}",
                *args,
            ],
            ns=self.ns,
            check=False,
            timeout=timeout,
        )

    def doctor(self, *args: str, timeout: float = 120) -> tuple[int, dict[str, dict]]:
        """``pyflannel doctor --json`` run on this host: (exit status, findings by check)."""
        proc = netns.run(
            [
                sys.executable,
                "-m",
                "pyflannel",
                "doctor",
                "--json",
                *self.bed.etcd_flags(),
                "--iface=eth0",
                f"--subnet-file={self.subnet_file}",
                *args,
            ],
            ns=self.ns,
            check=False,
            timeout=timeout,
        )
        return proc.returncode, {f["check"]: f for f in json.loads(proc.stdout)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 15.0, after: int = 0) -> re.Match:
        """Wait until the daemon log (from byte ``after``) matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log()[after:])
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ns}: no {pattern!r} in log:\n{self.log()[-3000:]}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.ns}: daemon exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait for the daemon to write subnet.env and report ready; the file's values."""
        self.wait_log(r"ready in [\d.]+ s", timeout, after=self._log_mark())
        return self.subnet_env()

    def _log_mark(self) -> int:
        text = self.log()
        return text.rfind("---- start")

    def subnet_env(self) -> dict[str, str]:
        return parse_env(self.subnet_file.read_text())

    @property
    def subnet(self) -> IPv4Network:
        return ip_interface(self.subnet_env()["FLANNEL_SUBNET"]).network

    @property
    def subnet6(self) -> IPv6Network | None:
        """The node's IPv6 subnet (FLANNEL_IPV6_SUBNET), None on an IPv4-only network."""
        value = self.subnet_env().get("FLANNEL_IPV6_SUBNET")
        return IPv6Network(ip_interface(value).network) if value else None

    @property
    def mtu(self) -> int:
        return int(self.subnet_env()["FLANNEL_MTU"])

    # -- inside the namespace --------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 30):
        return netns.run(list(cmd), ns=self.ns, check=check, timeout=timeout)

    def in_daemon_mounts(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` in the daemon's network and mount namespaces (``wg show`` of a daemon
        started with ``private_run``)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-n", *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def ip_json(self, *args: str) -> list[dict]:
        return netns.ip_json(self.ns, *args)

    def add_pod(self) -> IPv4Address:
        """A pod namespace on ``cni0`` with the subnet's second address, MTU from subnet.env;
        on a dual-stack network also the IPv6 subnet's second address (``pod_ip6``)."""
        subnet, mtu, bridge, port = self.subnet, self.mtu, self.bridge, f"vp{self.network or 0}"
        subnet6 = self.subnet6
        gateway, pod = subnet.network_address + 1, subnet.network_address + 2
        if netns.ip(self.ns, "link", "show", bridge, check=False).returncode == 0:
            netns.ip(self.ns, "link", "del", bridge)
        if self.pod_ns in netns.list_namespaces():
            netns.delete(self.pod_ns)
        # the old pod's veth goes with its namespace, but the kernel tears a namespace down
        # later: take the port now, or the new one's name may still be in use
        netns.ip(self.ns, "link", "del", port, check=False)
        netns.sysctl(self.ns, "net.ipv4.ip_forward", "1")
        netns.ip(self.ns, "link", "add", bridge, "type", "bridge")
        netns.ip(self.ns, "addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
        netns.create(self.pod_ns)
        netns.add_veth(self.ns, port, self.pod_ns, "eth0", mtu)
        netns.ip(self.ns, "link", "set", port, "master", bridge, "up")
        netns.ip(self.ns, "link", "set", bridge, "up")
        netns.ip(self.pod_ns, "addr", "add", f"{pod}/{subnet.prefixlen}", "dev", "eth0")
        netns.ip(self.pod_ns, "link", "set", "eth0", "up")
        netns.ip(self.pod_ns, "route", "add", "default", "via", str(gateway))
        self.pod_ip = pod
        self.pod_ip6 = None
        if subnet6 is not None:
            gateway6, pod6 = subnet6.network_address + 1, subnet6.network_address + 2
            netns.sysctl(self.ns, "net.ipv6.conf.all.forwarding", "1")
            netns.ip(
                self.ns, "addr", "add", f"{gateway6}/{subnet6.prefixlen}", "dev", bridge, "nodad"
            )
            netns.ip(
                self.pod_ns, "addr", "add", f"{pod6}/{subnet6.prefixlen}", "dev", "eth0", "nodad"
            )
            netns.ip(self.pod_ns, "-6", "route", "add", "default", "via", str(gateway6))
            self.pod_ip6 = pod6
        return pod

    def ping(
        self,
        dst,
        count: int = 3,
        interval: float = 0.2,
        size: int | None = None,
        dont_fragment: bool = False,
        wait: float = 1.0,
        from_pod: bool = True,
    ) -> PingResult:
        cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if size is not None:
            cmd += ["-s", str(size)]
        if dont_fragment:
            cmd += ["-M", "do"]
        proc = netns.run(
            [*cmd, str(dst)],
            ns=self.pod_ns if from_pod else self.ns,
            check=False,
            timeout=count * interval + wait + 10,
        )
        return parse_ping(proc.stdout + proc.stderr)

    def start_ping(self, dst, interval: float = 0.05, count: int | None = None) -> subprocess.Popen:
        """A continuous ping from the pod; end it with ``finish_ping``."""
        cmd = ["ip", "netns", "exec", self.pod_ns, "ping", "-n", "-i", str(interval), "-W", "1"]
        if count:
            cmd += ["-c", str(count)]
        return subprocess.Popen(
            [*cmd, str(dst)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    @staticmethod
    def finish_ping(
        proc: subprocess.Popen, interrupt: bool = False, timeout: float = 30
    ) -> PingResult:
        """Wait for a ping from ``start_ping`` (or interrupt it) and parse its summary."""
        if interrupt and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
        return parse_ping(out)

    # -- kernel state ----------------------------------------------------------------------

    def routes(self) -> list[dict]:
        return self.ip_json("route", "show", "proto", "152")

    def has_route(self, subnet: str) -> bool:
        """Has the daemon routed ``subnet`` (e.g. "10.1.7.0/24") here?"""
        return subnet in [r["dst"] for r in self.routes()]

    def neighbours(self, dev: str = "flannel.1") -> list[dict]:
        return [
            n
            for n in self.ip_json("neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])
        ]

    def fdb(self, dev: str = "flannel.1") -> list[dict]:
        out = netns.run(["bridge", "-j", "fdb", "show", "dev", dev], ns=self.ns).stdout.strip()
        return [e for e in (json.loads(out) if out else []) if e.get("dst")]


def member_ips(etcd_members: int) -> tuple[str, ...]:
    """The client addresses of a bed's etcd cluster (for its certificates' names)."""
    return tuple(f"{UNDERLAY}.{250 + i}" for i in range(1, etcd_members + 1))


class TestBed:
    __test__ = False  # not a pytest test class
    node_class: type[Node] = Node
    python = sys.executable  # the daemons' interpreter (bench/: an installed pyflannel's)

    def __init__(
        self,
        hosts: int = 3,
        mtu: int = 1500,
        workdir: str | None = None,
        etcd_members: int = 1,
        etcd_certs=None,
        etcd_ip: str = ETCD_IP,
    ):
        """``etcd_members`` > 1: a Raft cluster, member i in namespace ``<prefix>e<i>`` at
        198.51.100.(250 + i) (``member_ips``); 1: a single etcd in the LAN namespace at ``etcd_ip``
        (198.51.100.254; another address is added to the switch and routed on every host).
        ``etcd_certs`` (a testbed.certs.CertSet): etcd serves TLS with --client-cert-auth,
        and the daemons, etcdctl and the CLI are given the CA and the client certificate."""
        self.prefix = f"pf{os.getpid()}x{next(_beds)}-"
        self.lan = f"{self.prefix}lan"
        self.mtu = mtu
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pf-bed-"))
        self.nodes = [self.node_class(self, i) for i in range(1, hosts + 1)]
        self.extra_nodes: list[Node] = []  # second daemons on the same hosts
        self.etcd_certs = etcd_certs
        self.etcd_ip = etcd_ip
        if etcd_members == 1:
            self.etcd = EtcdServer(
                host=etcd_ip,
                client_port=2379,
                peer_port=2380,
                netns=self.lan,
                data_dir=str(self.workdir / "etcd"),
                certs=etcd_certs,
            )
        else:
            self.etcd = EtcdCluster(
                [
                    EtcdServer(
                        host=f"{UNDERLAY}.{250 + i}",
                        client_port=2379,
                        peer_port=2380,
                        netns=f"{self.prefix}e{i}",
                        data_dir=str(self.workdir / f"etcd{i}"),
                        name=f"e{i}",
                        certs=etcd_certs,
                    )
                    for i in range(1, etcd_members + 1)
                ]
            )
        self._namespaces: list[str] = []

    def __enter__(self) -> TestBed:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        netns.sweep()  # a run killed before its clean-up (SIGKILL, a machine restart) left these
        self._create(self.lan)
        netns.ip(self.lan, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
        netns.ip(self.lan, "addr", "add", f"{ETCD_IP}/24", "dev", "br0")
        if self.etcd_ip != ETCD_IP:
            netns.ip(self.lan, "addr", "add", f"{self.etcd_ip}/32", "dev", "br0")
        netns.ip(self.lan, "link", "set", "br0", "up")
        for node in self.nodes:
            self.attach_host(node)
        for member in getattr(self.etcd, "members", []):
            self._attach(member.netns, f"v{member.name}", member.host)
        self.before_etcd()
        self.etcd.start()

    def before_etcd(self) -> None:
        """The namespaces exist, etcd is not started yet (a subclass may shape the paths)."""

    def attach_host(self, node: Node, mac: str | None = None) -> None:
        """The node's host namespace on the switch (``mac``: its eth0's, else random)."""
        self._attach(node.ns, f"v{node.index}", node.underlay_ip, node.underlay_ip6, mac)
        if self.etcd_ip != ETCD_IP:
            netns.ip(node.ns, "route", "add", f"{self.etcd_ip}/32", "dev", "eth0")

    def etcd_flags(self, dash: str = "--") -> list[str]:
        """How a daemon or the CLI reaches the bed's etcd (``dash="-"``: Go's flag style)."""
        flags = [f"{dash}etcd-endpoints={self.etcd.url}"]
        certs = self.etcd_certs
        if certs is not None:
            flags += [
                f"{dash}etcd-cafile={certs.ca}",
                f"{dash}etcd-certfile={certs.client_cert}",
                f"{dash}etcd-keyfile={certs.client_key}",
            ]
        return flags

    def _attach(
        self, ns: str, port: str, address, address6: IPv6Address | None = None, mac=None
    ) -> None:
        """A namespace whose eth0 (``address``/24, and ``address6``/64 without duplicate
        address detection, so it is usable at once) is a port of the switch."""
        self._create(ns)
        netns.add_veth(self.lan, port, ns, "eth0", self.mtu)
        if mac:
            netns.ip(ns, "link", "set", "eth0", "address", mac)
        netns.ip(self.lan, "link", "set", port, "master", "br0", "up")
        netns.ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        if address6 is not None:
            netns.ip(ns, "addr", "add", f"{address6}/64", "dev", "eth0", "nodad")
        netns.ip(ns, "link", "set", "eth0", "up")

    def _create(self, name: str) -> None:
        netns.create(name)
        self._namespaces.append(name)

    def second_network(self, tag: str = "b") -> list[Node]:
        """One more daemon slot on every host, for another network (own subnet file, log,
        pod namespace and pod bridge ``cni<tag>``); the caller picks its --etcd-prefix."""
        nodes = [Node(self, node.index, network=tag) for node in self.nodes]
        self.extra_nodes += nodes
        return nodes

    def close(self) -> None:
        for node in self.extra_nodes + self.nodes:
            try:
                node.stop(timeout=5)
            except Exception:
                pass
        try:
            self.etcd.stop()
        except Exception:
            pass
        for node in self.extra_nodes + self.nodes:
            if node.pod_ns in netns.list_namespaces():
                netns.delete(node.pod_ns)
        for name in reversed(self._namespaces):
            netns.delete(name)
        self._namespaces.clear()
        if self._own_workdir and not os.environ.get("PYFLANNEL_KEEP_BED"):
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def put_config(self, config: dict | str | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        """Write the network config (a string as it is: junk on purpose). On 10.1.0.0/16 with
        /24s the bed's nodes allocate below NODES_SUBNET_MAX: tests write leases of nodes
        that do not exist above it, and a node draws its subnet from the whole free range."""
        if not isinstance(config, str):
            config = dict(config or VXLAN_CONFIG)
            if config.get("Network") == "10.1.0.0/16" and config.get("SubnetLen", 24) == 24:
                config.setdefault("SubnetMax", NODES_SUBNET_MAX)
        text = config if isinstance(config, str) else json.dumps(config)
        self.etcd.put(f"{prefix}/config", text)

    def leases(self, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
        out = self.etcd.ctl("get", f"{prefix}/subnets/", "--prefix").stdout.splitlines()
        return dict(zip(out[0::2], out[1::2], strict=False))
