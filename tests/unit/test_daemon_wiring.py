"""The daemon's wiring, without etcd, root or a kernel: the in-memory store, a backend that
records what it is asked, traffic rules that do nothing. Start-up order, readiness, a lost
lease followed by the backend and subnet.env, peers applied in batches."""

import asyncio
import contextlib
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from pyflannel.app.cli import make_parser
from pyflannel.app.daemon import Daemon, Parts
from pyflannel.app.options import build_options
from pyflannel.backend.base import Backend
from pyflannel.backend.plan import Peer
from pyflannel.backend.reconciler import Reconciler, ReconcileReport
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.subnet.env_file import parse_env
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.memory import MemoryStore, MemorySubnetManager

CONFIG = b'{"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "recording"}}'
EXT = ExtIface(
    name="eth0",
    index=2,
    iface_addr=IPv4Address("198.51.100.1"),
    public_ip=IPv4Address("198.51.100.1"),
    mtu=1500,
)


class RecordingReconciler(Reconciler):
    """A reconciler with no kernel: it says what it was asked, in order."""

    def __init__(self, source, journal: list):
        super().__init__(netlink=None, source=source)  # type: ignore[arg-type]
        self.journal = journal
        self.fail_reconciles = 0
        self.batches: list[int] = []

    async def update_peers(self, changes) -> None:
        self.batches.append(len(changes.added) + len(changes.removed))
        self.journal.append(f"peers +{len(changes.added)} -{len(changes.removed)}")
        await super().update_peers(changes)  # keeps .peers; no kernel before a reconcile

    async def reconcile(self) -> ReconcileReport:
        if self.fail_reconciles:
            self.fail_reconciles -= 1
            self.journal.append("reconcile failed")
            return ReconcileReport(failed=["no kernel today"])
        self.journal.append("reconcile")
        return ReconcileReport()


class RecordingBackend(Backend):
    """A backend with no kernel: it says what it was asked, in order."""

    name = "recording"
    device_name = "rec0"

    def __init__(self, network, ext, journal: list):
        super().__init__(netlink=None, network=network, ext=ext)  # type: ignore[arg-type]
        self.mtu = ext.mtu - 10
        self.journal = journal
        self.kernel: RecordingReconciler = RecordingReconciler(self, journal)

    async def prepare(self) -> LeaseAttrs:
        self.journal.append("backend prepared")
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.public_ip, backend_type="recording")

    async def configure(self, lease) -> None:
        self.journal.append(f"assign {lease.subnet}")

    async def peer(self, lease) -> Peer:
        return Peer(lease.subnet, lease.attrs.public_ip, "recording")


class QuietRules:
    """Traffic rules that are never needed (--ip-masq off, no forward rules)."""

    mode, enabled, masquerade, forward = "iptables", False, False, False
    peer_filter_port, rules, restores, last_problem, strangers = None, [], 0, "", None

    async def setup(self, networks) -> None:
        pass

    async def set_peers(self, ips) -> None:
        pass

    async def set_site_members(self, ips) -> None:
        pass

    async def present(self) -> bool:
        return True


async def no_other_mode(mode: str, cluster) -> None:
    """No other traffic-rules mode to clean (there are no rules at all)."""


class NoKernel:
    """The netlink worker, for the liveness check only."""

    async def call(self, fn, *args, **kwargs):
        return fn(None, *args, **kwargs)

    def close(self) -> None:
        pass


def options(tmp_path: Path, *extra: str):
    args = make_parser().parse_args(
        [
            "run",
            f"--subnet-file={tmp_path / 'subnet.env'}",
            "--healthz-port=0",
            "--probe-interval=0",
            "--reconcile-interval=0.05",
            "--iptables-forward-rules=false",
            "--subnet-lease-ttl=600",
            *extra,
        ]
    )
    return build_options(args, {})


def parts_for(store: MemoryStore, journal: list, made: list, **kernel_faults) -> Parts:
    """The daemon's parts: the in-memory store, the recording backend (appended to ``made``
    once started), no kernel."""

    async def start_backend(ctx):
        journal.append("backend started")
        backend = RecordingBackend(ctx.network, ctx.ext, journal)
        for name, value in kernel_faults.items():
            setattr(backend.kernel, name, value)
        made.append(backend)
        return backend, await backend.prepare()

    async def interface(choice, ipv6):
        return EXT

    async def fingerprint_of(index):
        return "02:00:00:00:00:01"

    return Parts(
        store=MemorySubnetManager(store),
        netlink=NoKernel(),  # type: ignore[arg-type]
        rules=lambda made_for: QuietRules(),  # type: ignore[arg-type, return-value]
        remove_other_mode=no_other_mode,
        start_backend=start_backend,
        interface=interface,
        hardware_address=fingerprint_of,
        kernel_watch=False,
        privileges=lambda: None,
    )


@contextlib.asynccontextmanager
async def running_daemon(tmp_path, store: MemoryStore, journal: list, **kernel_faults):
    """A daemon on the in-memory store with the recording backend; yields (daemon, the list
    that will hold its backend once started)."""
    made: list[RecordingBackend] = []
    daemon = Daemon(options(tmp_path), parts_for(store, journal, made, **kernel_faults))
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon, made
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await daemon.close()


async def wait_for(check, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def subnet_env(tmp_path) -> dict[str, str]:
    return parse_env((tmp_path / "subnet.env").read_text())


async def test_start_up_follows_upstreams_order_and_ready_means_programmed(tmp_path):
    store, journal = MemoryStore(config=CONFIG), []
    async with running_daemon(tmp_path, store, journal, fail_reconciles=2) as (daemon, _):
        await wait_for(daemon.ready.is_set)
        lease = daemon.running.lease
        assert journal[:4] == [
            "backend started",
            "backend prepared",
            f"assign {lease.subnet}",
            "reconcile failed",  # the first listing was empty: no peers to apply
        ]
        assert journal.index("reconcile") > journal.index("reconcile failed")
        assert subnet_env(tmp_path) == {
            "FLANNEL_NETWORK": "10.1.0.0/16",
            "FLANNEL_SUBNET": str(IPv4Interface(f"{lease.subnet.network_address + 1}/24")),
            "FLANNEL_MTU": "1490",
            "FLANNEL_IPMASQ": "false",
        }
        state = daemon.snapshot().daemon
        assert state.ready and not state.not_ready


async def test_a_missing_config_is_waited_for_then_used(tmp_path, caplog):
    store, journal = MemoryStore(), []
    async with running_daemon(tmp_path, store, journal) as (daemon, made):
        await wait_for(lambda: "no network config in the memory store" in caplog.text)
        assert not made and not daemon.ready.is_set()  # nothing started without a config
        store.config = CONFIG
        await wait_for(daemon.ready.is_set, timeout=5)  # the next retry (every second)
    assert journal[0] == "backend started"


async def test_a_lost_lease_is_reacquired_and_the_backend_and_subnet_env_follow(tmp_path):
    store, journal = MemoryStore(config=CONFIG), []
    async with running_daemon(tmp_path, store, journal) as (daemon, made):
        await wait_for(daemon.ready.is_set)
        backend = made[0]
        first = daemon.running.lease
        # Another node takes the subnet: this node must move, and say so everywhere.
        intruder = LeaseAttrs(IPv4Address("198.51.100.9"), backend_type="recording")
        store.put_raw(first.key, intruder.to_json(), ttl=600)
        await wait_for(lambda: daemon.running.lease.subnet != first.subnet)
        moved = daemon.running.lease
        await wait_for(lambda: f"assign {moved.subnet}" in journal)
        await wait_for(
            lambda: subnet_env(tmp_path)["FLANNEL_SUBNET"].startswith(
                str(moved.subnet.network_address + 1)
            )
        )
        assert daemon.running.table.own == moved.subnet
        # The old subnet is now a peer (the intruder's), programmed like any other.
        await wait_for(lambda: first.subnet in backend.peers)


async def test_a_burst_of_leases_reaches_the_backend_in_a_few_batches(tmp_path):
    store, journal = MemoryStore(config=CONFIG), []
    async with running_daemon(tmp_path, store, journal) as (daemon, made):
        await wait_for(daemon.ready.is_set)
        backend = made[0]
        before = len(backend.kernel.batches)
        for i in range(100, 200):
            attrs = LeaseAttrs(IPv4Address(f"198.51.101.{i - 99}"), backend_type="recording")
            store.put_raw(f"10.1.{i}.0-24", attrs.to_json(), ttl=600)
        await wait_for(lambda: len(backend.peers) == 100)
        batches = backend.kernel.batches[before:]
        assert sum(batches) == 100 and len(batches) <= 3, batches
        assert IPv4Network("10.1.150.0/24") in backend.peers


@pytest.mark.parametrize("down_for", [0.3])
async def test_a_store_outage_leaves_the_data_plane_and_the_watch_catches_up(tmp_path, down_for):
    store, journal = MemoryStore(config=CONFIG), []
    async with running_daemon(tmp_path, store, journal) as (daemon, made):
        await wait_for(daemon.ready.is_set)
        backend = made[0]
        store.fail()
        await wait_for(lambda: not daemon.running.watch.connected)
        assert "memory unreachable" in daemon.summary()
        await asyncio.sleep(down_for)
        store.recover()
        store.put_raw(
            "10.1.250.0-24",
            LeaseAttrs(IPv4Address("198.51.100.250"), backend_type="recording").to_json(),
            ttl=600,
        )
        await wait_for(lambda: IPv4Network("10.1.250.0/24") in backend.peers, timeout=10)
        assert daemon.running.watch.relists == 1  # resumed, nothing re-listed


async def test_site_is_refused_where_it_cannot_work_yet(tmp_path):
    """--site on a dual-stack network: a clear error at start, before any lease is taken."""
    dual = CONFIG.replace(
        b'"SubnetLen"', b'"EnableIPv6": true, "IPv6Network": "fd10::/48", "SubnetLen"'
    )
    store, journal, made = MemoryStore(config=dual), [], []
    daemon = Daemon(options(tmp_path, "--site=de"), parts_for(store, journal, made))
    with pytest.raises(BackendError, match="--site is not supported on a dual-stack network"):
        await daemon.start()
    assert not store.records  # no lease taken
    await daemon.close()
