"""``pyflannel run``: wires etcd, the lease, the backend and the kernel together.

Start-up order follows upstream main.go: config from etcd (retried every second), external
interface, backend device, lease, device address, subnet.env, then the peer watch and the
renewal loop, then READY=1. On SIGTERM/SIGINT it stops and exits 0, leaving the lease, the
device and all peer entries in place so that a restart does not interrupt traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from pyflannel import __version__
from pyflannel.app.observe import StatusAnswers, daemon_snapshot
from pyflannel.app.options import Options
from pyflannel.backend.base import Backend
from pyflannel.backend.plan import HOST_GW_BACKEND, VXLAN_BACKEND, Encap, Peer, Peer6, Table
from pyflannel.backend.registry import BackendContext, start_backend
from pyflannel.backend.udp.path import UdpTuning, default_workers
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.control.backoff import Backoff, Outage
from pyflannel.control.config_watch import ConfigWatch
from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.control.peer_watch import PeerWatch
from pyflannel.errors import ConfigError, FlannelError, InterfaceError, StoreUnavailable
from pyflannel.kernel.iface import ExtIface, chosen_interface, hardware_address
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.privileges import check_privileges
from pyflannel.kernel.watch import Damage, KernelWatch, Watched
from pyflannel.ops import sd_notify
from pyflannel.ops.health import start_health_endpoint
from pyflannel.ops.http_endpoint import HttpEndpoint, as_json, text
from pyflannel.ops.instance import Instance
from pyflannel.ops.mesh.prober import MeshProber
from pyflannel.ops.snapshot import DaemonSnapshot
from pyflannel.ops.status.live import daemon_status
from pyflannel.subnet.config import NetworkConfig, parse_network_config
from pyflannel.subnet.env_file import (
    SubnetEnv,
    previous_network,
    previous_network6,
    previous_subnet,
    previous_subnet6,
    write_atomic,
)
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.owner import NodeIdentity, node_fingerprint, vtep_mac_of
from pyflannel.subnet.stores import open_store
from pyflannel.subnet.table import LeaseTable, PeerChanges
from pyflannel.traffic.base import TrafficManager, remove_other_mode
from pyflannel.traffic.families import NetworkRules
from pyflannel.traffic.iptables import IptablesRules
from pyflannel.traffic.nftables import NftablesRules
from pyflannel.traffic.ownership import Cluster

log = logging.getLogger(__name__)

CONFIG_RETRY = 1.0  # seconds, as upstream
CONFIG_REMINDER = 30.0  # repeat an unchanged config error this often, not every second
PEER_LOG_LIMIT = 10  # log peers one by one up to this many per batch, else a summary
DROP_REPORT_INTERVAL = 10.0  # seconds
MESH_PUBLISH_INTERVAL = 5.0  # seconds: the mesh summary is written at most this often
REPAIR_SETTLE = 0.05  # seconds to wait after a kernel notification before reconciling


@dataclass
class Running:
    """What the start-up built: the network, the underlay (it may move), the backend, the
    lease keeper, the lease table and the peer watch."""

    network: NetworkConfig
    ext: ExtIface
    backend: Backend
    keeper: LeaseKeeper
    table: LeaseTable
    watch: PeerWatch
    config_watch: ConfigWatch

    @property
    def lease(self) -> Lease:
        lease = self.keeper.lease
        assert lease is not None, "a running daemon holds a lease"
        return lease


class Daemon:
    def __init__(self, options: Options):
        self.options = options
        self.started = process_start_time()
        self.store = open_store(options.store)
        self.instance = Instance(options.subnet_file, options.etcd_prefix)
        self.netlink = Netlink()
        self.running: Running | None = None  # set once start() is done
        self.ready = asyncio.Event()
        self.programmed = asyncio.Event()  # a full reconcile has succeeded
        self._pending: dict[IPv4Network, tuple[bool, Lease]] = {}  # subnet -> (added?, lease)
        self._pending_wake = asyncio.Event()
        self.subnet_file_written = False
        self.endpoint: HttpEndpoint | None = None
        self.kernel_watch: KernelWatch | None = None
        self.prober: MeshProber | None = None
        self.mesh_writes = 0  # summaries published to the store (their cost)
        self._underlay_problem = ""
        self.ipv6 = False  # the network is dual-stack (EnableIPv6)
        self.traffic = self._traffic_rules(IptablesRules)

    def _traffic_rules(self, kind: type[TrafficManager], ipv6: bool = False) -> NetworkRules:
        """The network's rules: IPv4, and IPv6 on a dual-stack network."""
        o = self.options
        return NetworkRules(
            [
                kind(
                    masquerade=o.ip_masq,
                    forward=o.iptables_forward_rules,
                    random_fully_disabled=o.ip_masq_fully_random_disable,
                    family=family,
                )
                for family in ((4, 6) if ipv6 else (4,))
            ]
        )

    def _rule_networks(self, cfg: NetworkConfig, lease: Lease) -> list[tuple[Cluster, Cluster]]:
        """(cluster, pod subnet) per family, for the traffic rules."""
        networks: list[tuple[Cluster, Cluster]] = [(cfg.cidr, lease.subnet)]
        if cfg.cidr6 is not None and lease.ipv6_subnet is not None:
            networks.append((cfg.cidr6, lease.ipv6_subnet))
        return networks

    @property
    def r(self) -> Running:
        assert self.running is not None, "start() first"
        return self.running

    # -- start-up --------------------------------------------------------------------------

    async def load_config(self) -> NetworkConfig:
        """The network config, waiting (1 s retries) until it exists and is valid."""
        last_error, last_logged = "", 0.0
        store = Outage(log, f"{self.store.name} unreachable while reading the network config")
        while True:
            try:
                cfg = parse_network_config(await self.store.network_config())
                store.ok()
                return cfg
            except StoreUnavailable as e:
                store.failed(e, f"retrying every {CONFIG_RETRY:.0f} s")
            except ConfigError as e:
                store.ok()
                now = time.monotonic()
                if str(e) != last_error or now - last_logged > CONFIG_REMINDER:
                    log.error(
                        "network config at %s: %s; retrying every %.0f s",
                        self.store.config_location,
                        e,
                        CONFIG_RETRY,
                    )
                    last_error, last_logged = str(e), now
            await asyncio.sleep(CONFIG_RETRY)

    async def _external_interface(self) -> ExtIface:
        return await self.netlink.call(chosen_interface, self.options.iface_choice, ipv6=self.ipv6)

    def _backend_context(self, cfg: NetworkConfig, ext: ExtIface) -> BackendContext:
        o = self.options
        return BackendContext(
            netlink=self.netlink,
            network=cfg,
            ext=ext,
            udp_tuning=UdpTuning(
                datapath=o.udp_datapath,
                fastpath=o.udp_fastpath,
                workers=o.udp_workers or default_workers(),
                verbosity=o.v,
            ),
            fallback=o.backend_fallback,
            udp_fallback_port=o.udp_fallback_port,
            wireguard_datapath=o.wireguard_datapath,
        )

    async def start(self) -> Running:
        o = self.options
        log.info(
            "pyflannel %s starting: etcd %s, prefix %s",
            __version__,
            ",".join(o.etcd_endpoints),
            o.etcd_prefix,
        )
        cfg = await self.load_config()
        if not cfg.enable_ipv4:
            raise ConfigError(
                "EnableIPv4 is false: IPv6-only networks are not supported with etcd (upstream "
                "v0.20.2 writes them as 0.0.0.0-0&<v6> keys that overlap, so only one node "
                "can join); use a dual-stack config (EnableIPv4 and EnableIPv6)"
            )
        self.ipv6 = cfg.enable_ipv6
        self.traffic = self._traffic_rules(
            NftablesRules if cfg.enable_nftables else IptablesRules, ipv6=cfg.enable_ipv6
        )
        await remove_other_mode(self.traffic.mode, cfg.cidr)
        if cfg.cidr6 is not None:
            await remove_other_mode(self.traffic.mode, cfg.cidr6)
        ext = await self._external_interface()
        log.info("using interface %s", ext.describe())
        backend, attrs = await start_backend(self._backend_context(cfg, ext))
        backend.also_own(previous_network(o.subnet_file))
        if cfg.cidr6 is not None:
            backend.also_own(previous_network6(o.subnet_file))
        snap = backend.snapshot()
        if o.vxlan_peer_filter and snap.type == VXLAN_BACKEND:
            self.traffic.vxlan_port = snap.port
        identity = NodeIdentity(
            node_fingerprint(await self.netlink.call(hardware_address, ext.index)),
            vtep_mac=vtep_mac_of(attrs),
        )
        keeper = LeaseKeeper(
            self.store,
            public_ip=ext.public_ip,
            ttl=o.subnet_lease_ttl,
            renew_margin=o.subnet_lease_renew_margin * 60,
            load_config=self.load_config,
            on_change=self._lease_changed,
            identity=identity,
        )
        lease = await keeper.acquire(
            attrs,
            previous_subnet(o.subnet_file),
            previous_subnet6(o.subnet_file) if cfg.enable_ipv6 else None,
        )
        await backend.assign(lease)
        await self.traffic.setup(self._rule_networks(cfg, lease))
        self._write_subnet_file(cfg, backend, lease)
        table = LeaseTable(cfg.cidr, own=lease.subnet, own_ip=ext.public_ip)
        watch = PeerWatch(
            self.store,
            table,
            self._peers_changed,
            on_own_event=keeper.notice,
            on_snapshot=keeper.verify,
            first_listing=keeper.last_listing,
        )
        config_watch = ConfigWatch(self.store, cfg, o.reconcile_interval)
        self.running = Running(cfg, ext, backend, keeper, table, watch, config_watch)
        return self.running

    def _write_subnet_file(self, cfg: NetworkConfig, backend: Backend, lease: Lease) -> None:
        env = SubnetEnv.for_lease(cfg, lease, backend.mtu, self.options.ip_masq)
        if write_atomic(self.options.subnet_file, env.render()):
            subnets = str(lease.subnet) + (f", {lease.ipv6_subnet}" if env.ipv6_subnet else "")
            log.info("wrote %s: subnet %s, MTU %d", self.options.subnet_file, subnets, env.mtu)
        self.subnet_file_written = True

    # -- running ---------------------------------------------------------------------------

    async def _peers_changed(self, changes: PeerChanges) -> None:
        """From the watch: the first listing is applied at once (the first reconcile must
        see it); later changes queue up and are applied together by ``_apply_peer_changes``,
        so a burst of events becomes a few batches of kernel requests, not one each."""
        for key, reason in changes.ignored:
            log.warning("ignoring etcd key %s: %s", key, reason)
        if not changes:
            return
        if not self.r.watch.synced.is_set():
            await self._program_peers(changes)
            return
        for lease in changes.removed:
            self._pending[lease.subnet] = (False, lease)
        for lease in changes.added:
            self._pending[lease.subnet] = (True, lease)
        self._pending_wake.set()

    async def _apply_peer_changes(self) -> None:
        while True:
            await self._pending_wake.wait()
            self._pending_wake.clear()
            pending, self._pending = self._pending, {}
            await self._program_peers(
                PeerChanges(
                    added=[lease for added, lease in pending.values() if added],
                    removed=[lease for added, lease in pending.values() if not added],
                )
            )

    async def _program_peers(self, changes: PeerChanges) -> None:
        if not changes:
            return
        detail = len(changes.added) + len(changes.removed) <= PEER_LOG_LIMIT
        for lease in changes.added:
            (log.info if detail else log.debug)(
                "peer %s at %s (%s) added",
                lease.subnet,
                lease.attrs.public_ip,
                lease.attrs.backend_type or "udp",
            )
        for lease in changes.removed:
            (log.info if detail else log.debug)(
                "peer %s at %s removed", lease.subnet, lease.attrs.public_ip
            )
        if not detail:
            log.info(
                "%d peers added or changed, %d removed", len(changes.added), len(changes.removed)
            )
        backend = self.r.backend
        await backend.update_peers(changes)
        await self.traffic.set_peers(
            [str(p.public_ip) for p in backend.peers.values() if p.encap == Encap.VXLAN]
        )

    async def _lease_changed(self, old: Lease | None, new: Lease) -> None:
        r = self.r
        await r.backend.assign(new)
        await self._peers_changed(r.table.set_own(new.subnet))
        await self.traffic.setup(self._rule_networks(r.network, new))
        self._write_subnet_file(r.network, r.backend, new)

    async def _follow_underlay(self) -> None:
        """Has the external interface or its address changed? Then move the tunnel endpoint
        and re-advertise the lease with the new public IP, keeping the subnet."""
        r = self.r
        try:
            ext = await self._external_interface()
        except InterfaceError as e:
            if str(e) != self._underlay_problem:
                log.error("underlay: %s; keeping the current set-up until it is back", e)
                self._underlay_problem = str(e)
            return
        if self._underlay_problem:
            log.info("underlay: back (%s)", ext.describe())
            self._underlay_problem = ""
        if ext == r.ext:
            return
        log.warning(
            "UNDERLAY CHANGED: %s -> %s; moving the tunnel endpoint and updating the lease",
            r.ext.describe(),
            ext.describe(),
        )
        r.ext = ext
        attrs = await r.backend.move_underlay(ext)
        r.table.own_ip = ext.public_ip
        r.keeper.change_attrs(attrs)
        self._write_subnet_file(r.network, r.backend, r.lease)  # the MTU may have changed

    async def _reconcile_once(self) -> bool:
        """One full reconcile; True if the kernel now matches the desired state."""
        await self._follow_underlay()
        try:
            report = await self.r.backend.reconcile()
        except FlannelError as e:
            log.error("could not reconcile the data plane: %s; retrying", e)
            return False
        if report.repaired:
            log.warning("kernel state repaired: %s", "; ".join(report.repaired[:20]))
        return not report.failed

    async def _reconcile_loop(self) -> None:
        interval = self.options.reconcile_interval
        backoff = Backoff(first=1.0, cap=interval)
        repair_wanted = self.r.backend.repair_wanted
        while True:
            if not await self._reconcile_once():
                await asyncio.sleep(backoff.next())
                continue
            self.programmed.set()
            backoff.reset()
            try:
                await asyncio.wait_for(repair_wanted.wait(), interval)
                await asyncio.sleep(REPAIR_SETTLE)  # let a burst of notifications arrive
            except TimeoutError:
                pass
            repair_wanted.clear()

    async def run(self) -> None:
        check_privileges()
        self.instance.acquire()
        o = self.options
        self.endpoint = await start_health_endpoint(
            {
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/metrics": self._metrics,
                "/status": self._status,
            },
            o.healthz_ip,
            o.healthz_port,
            pinned="healthz_port" in o.given,
            instance=self.instance,
        )
        r = await self.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(r.watch.run(), name="peer-watch")
            tasks.create_task(self._apply_peer_changes(), name="peer-changes")
            await r.watch.synced.wait()
            # Only now is the desired state known: reconciling earlier would remove the
            # entries of every peer. Ready means programmed: wait for the first full pass.
            tasks.create_task(self._reconcile_loop(), name="reconcile")
            await self.programmed.wait()
            self.kernel_watch = KernelWatch(self._watched, self._kernel_damaged)
            self.kernel_watch.start()
            tasks.create_task(r.keeper.run(), name="lease-keeper")
            tasks.create_task(self._report_drops(), name="drop-report")
            tasks.create_task(r.config_watch.run(), name="config-watch")
            if o.probe_interval > 0:
                self.prober = MeshProber(
                    peers=lambda: list(r.backend.peers.values()),
                    target=self._probe_target,
                    mtu=lambda: r.backend.mtu,
                    interval=o.probe_interval,
                    rate=o.probe_rate,
                )
                tasks.create_task(self.prober.run(), name="mesh-prober")
                tasks.create_task(self._publish_mesh(), name="mesh-summary")
            if self.traffic.enabled:
                tasks.create_task(self.traffic.resync_forever(o.iptables_resync), name="iptables")
            self.ready.set()
            log.info(
                "ready in %.2f s: subnet %s, %d peers, backend %s on %s",
                time.time() - self.started,
                r.lease.subnet,
                len(r.table.peers()),
                r.backend.name,
                r.backend.device_name,
            )
            sd_notify.notify(f"READY=1\nSTATUS={self.summary()}")
            interval = sd_notify.watchdog_interval()
            if interval:
                tasks.create_task(self._watchdog(interval), name="watchdog")
                log.info("systemd watchdog: pinging every %.1f s while alive", interval)

    async def _publish_mesh(self, every: float = MESH_PUBLISH_INTERVAL) -> None:
        """This node's view of its paths in etcd, for `pyflannel status --cluster` on any
        node: written only when a state changed (at most every ``every`` s), attached to the
        node's lease (no writes to keep it alive)."""
        published: dict | None = None
        while True:
            await asyncio.sleep(every)
            assert self.prober is not None
            r = self.r
            paths = {subnet: v["state"] for subnet, v in self.prober.view().items()}
            if paths == published:
                continue
            summary = {
                "subnet": str(r.lease.subnet),
                "public_ip": str(r.ext.public_ip),
                "paths": paths,
            }
            try:
                await self.store.publish_paths(r.lease, summary)
            except FlannelError as e:
                log.debug("mesh summary not published: %s", e)
                continue
            published = paths
            self.mesh_writes += 1

    def _probe_target(self, half: Peer | Peer6) -> IPv4Address | IPv6Address:
        """The peer's flannel device address (<subnet>.0, or <IPv6 subnet>::); host-gw has
        none: the CNI bridge's <subnet>.1 (or ::1)."""
        offset = 1 if self.r.backend.name == HOST_GW_BACKEND else 0
        return half.subnet.network_address + offset

    def _watched(self) -> Watched:
        r = self.r
        devices = r.backend.devices()
        names = {r.backend.device_name, *r.backend.extra_devices()}
        if devices.tun is not None:
            names.add(TUN_NAME)
        return Watched(
            frozenset(names),
            frozenset(i for i in (devices.vxlan, devices.vxlan6) if i),
            r.ext.index,
            devices.networks,
        )

    def _kernel_damaged(self, damage: Damage) -> None:
        table, key, what = damage
        backend = self.r.backend
        if table in tuple(Table) and backend.explains(table, key):
            return  # our own doing
        log.debug("kernel: %s; reconciling", what)
        backend.repair_wanted.set()

    def summary(self) -> str:
        """The one line systemd shows as the unit's status."""
        r = self.r
        return (
            f"subnet {r.lease.subnet}, {len(r.backend.peers)} peers, "
            f"{r.backend.name} on {r.backend.device_name}"
            + ("" if r.watch.connected else f", {self.store.name} unreachable")
        )

    async def alive(self) -> str:
        """Empty if the daemon is alive, else why not: the event loop runs (we are here),
        the netlink thread answers, and a userspace data path has not died."""
        try:
            await asyncio.wait_for(self.netlink.call(lambda ipr: None), 5)
        except TimeoutError:
            return "the netlink worker does not answer"
        problem = self.running.backend.datapath_problem() if self.running else None
        return f"the UDP data path died: {problem}" if problem else ""

    async def _watchdog(self, interval: float) -> None:
        last_status = ""
        while True:
            problem = await self.alive()
            if problem:
                log.error("not pinging the systemd watchdog: %s", problem)
            else:
                status = self.summary()
                sd_notify.notify(
                    "WATCHDOG=1" + (f"\nSTATUS={status}" if status != last_status else "")
                )
                last_status = status
            await asyncio.sleep(interval)

    # -- what /healthz, /readyz, /metrics and /status see ---------------------------------

    async def _healthz(self) -> tuple[int, str, bytes]:
        problem = await self.alive()
        return (
            text(500, f"flanneld is not healthy: {problem}\n")
            if problem
            else text(200, "flanneld is running")
        )

    async def _readyz(self) -> tuple[int, str, bytes]:
        if self.ready.is_set():
            return text(200, "flanneld is ready")
        return text(503, "flanneld is not ready yet")

    async def _metrics(self) -> tuple[int, str, bytes]:
        from pyflannel.ops.metrics import metrics_text  # prometheus_client: only when scraped

        stats = await self.datapath_stats()
        body = metrics_text(self.snapshot(), stats)
        return 200, "text/plain; version=0.0.4; charset=utf-8", body

    async def _status(self) -> tuple[int, str, bytes]:
        return as_json(200, await daemon_status(self.snapshot(), StatusAnswers(self)))

    def snapshot(self) -> DaemonSnapshot:
        return daemon_snapshot(self)

    async def datapath_stats(self) -> dict | None:
        """The userspace data path's counters (None without one). Asking the workers waits
        for their answers: in a thread, never on this loop."""
        if self.running is None:
            return None
        return await asyncio.to_thread(self.running.backend.datapath_stats)

    async def _report_drops(self, every: float = DROP_REPORT_INTERVAL) -> None:
        """Log what the userspace data path dropped, at most once per ``every`` seconds."""
        before: dict[str, int] = {}
        while True:
            await asyncio.sleep(every)
            stats = await self.datapath_stats()
            if stats is None:
                continue
            now = {
                f"{direction} {reason}": n
                for direction in ("to_peers", "from_peers")
                for reason, n in stats[direction]["drops"].items()
            }
            new = {k: n - before.get(k, 0) for k, n in now.items() if n > before.get(k, 0)}
            if new:
                log.warning(
                    "udp data path dropped packets in the last %.0f s: %s",
                    every,
                    ", ".join(f"{k}={n}" for k, n in sorted(new.items())),
                )
            before = now

    async def close(self) -> None:
        if self.kernel_watch is not None:
            self.kernel_watch.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.running is not None:
            await self.running.backend.close()
        await self.store.close()
        self.netlink.close()
        self.instance.release()


async def serve(options: Options) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status for the process."""
    daemon = Daemon(options)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None, "serve() runs in a task"
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("received %s, shutting down (the data plane stays in place)", signame)
            sd_notify.notify("STOPPING=1")
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await daemon.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    except FlannelError as e:
        log.error("%s", e)
        return 1
    except ExceptionGroup as group:  # from the task group of the running daemon
        errors = group.subgroup(FlannelError)
        if errors is None or errors is not group:
            raise
        for leaf in _leaves(errors):
            log.error("%s", leaf)
        return 1
    finally:
        await daemon.close()
    log.info("Exiting cleanly...")
    return 0


def _leaves(group: BaseExceptionGroup):
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


def process_start_time() -> float:
    """When this process started (wall clock), so "ready in" counts the imports too."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()
