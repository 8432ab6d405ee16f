"""``pyflannel run``: builds the parts and runs them. The loops live in their layers (control/:
the lease, the peers, the reconcile loop, the underlay; ops/: health, watchdog, mesh); this
module only wires them, in upstream main.go's start-up order: config from the store (retried
every second), external interface, backend device, lease, device address, subnet.env, then
the peer watch, the first full reconcile, the renewal loop, and READY=1. On SIGTERM/SIGINT it
stops and exits 0, leaving the lease, the device and all peer entries in place so that a
restart does not interrupt traffic.

The parts come from ``Parts`` (the store, the kernel, the backends, the traffic rules), so
that the wiring can be unit-tested with an in-memory store and a backend of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from pyflannel import __version__
from pyflannel.app import timeline
from pyflannel.app.observe import StatusAnswers, daemon_snapshot, summary
from pyflannel.app.options import Options
from pyflannel.app.running import Running
from pyflannel.backend.base import Backend
from pyflannel.backend.dataplane import DataPlane
from pyflannel.backend.plan import Peer, Peer6
from pyflannel.backend.registry import BackendContext, start_backend
from pyflannel.backend.sites.link import SiteLink, site_key_path
from pyflannel.control.config_watch import ConfigWatch
from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.control.lease_moves import LeaseMoves
from pyflannel.control.network_config import load_network_config
from pyflannel.control.peer_programmer import PeerProgrammer
from pyflannel.control.peer_watch import PeerWatch
from pyflannel.control.reconciling import ReconcileLoop
from pyflannel.control.site_records import SiteRecords
from pyflannel.control.underlay import UnderlayFollower
from pyflannel.errors import BackendError, FlannelError
from pyflannel.kernel.iface import ExtIface, IfaceChoice, chosen_interface, hardware_address
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.privileges import check_privileges
from pyflannel.kernel.watch import KernelWatch
from pyflannel.ops import sd_notify
from pyflannel.ops.datapath_report import report_drops
from pyflannel.ops.endpoints import routes
from pyflannel.ops.health import start_health_endpoint
from pyflannel.ops.http_endpoint import HttpEndpoint
from pyflannel.ops.instance import Instance
from pyflannel.ops.liveness import Liveness
from pyflannel.subnet.config import NetworkConfig, check_supported
from pyflannel.subnet.env_file import (
    SubnetEnv,
    previous_network,
    previous_network6,
    previous_subnet,
    previous_subnet6,
    write_atomic,
)
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.manager import SubnetManager
from pyflannel.subnet.owner import NodeIdentity, node_fingerprint, vtep_mac_of
from pyflannel.subnet.stores import open_store
from pyflannel.subnet.table import LeaseTable
from pyflannel.traffic.families import NetworkRules, RulesFor, network_rules, remove_other_mode
from pyflannel.traffic.ownership import Cluster

if TYPE_CHECKING:  # imported once the daemon is ready, and only if it probes
    from pyflannel.ops.mesh.healer import PathHealer
    from pyflannel.ops.mesh.mtu_fixer import PathMtuFixer
    from pyflannel.ops.mesh.prober import MeshProber
    from pyflannel.ops.mesh.publisher import MeshPublisher
    from pyflannel.ops.snapshot import DaemonSnapshot

log = logging.getLogger(__name__)

SITE_RECORDS_WAIT = 5.0  # seconds the first programming waits for the node records (--site)


@dataclass
class Parts:
    """What the daemon is wired from. ``Parts.real(options)`` gives the real ones; a test
    gives an in-memory store, a backend of its own, no kernel watch."""

    store: SubnetManager
    netlink: Netlink
    rules: Callable[[RulesFor], NetworkRules]  # a network's traffic rules
    remove_other_mode: Callable[[str, Cluster], Awaitable[None]]  # (mode in use, network)
    # The external interface as chosen now (IfaceChoice, dual-stack?), a link's MAC address.
    interface: Callable[[IfaceChoice, bool], Awaitable[ExtIface]]
    hardware_address: Callable[[int], Awaitable[str]]
    start_backend: Callable[[BackendContext], Awaitable[tuple[Backend, LeaseAttrs]]] = start_backend
    kernel_watch: bool = True
    privileges: Callable[[], None] = check_privileges

    @classmethod
    def real(cls, options: Options) -> Parts:
        netlink = Netlink()

        async def interface(choice: IfaceChoice, ipv6: bool) -> ExtIface:
            return await netlink.call(chosen_interface, choice, ipv6=ipv6)

        async def mac(index: int) -> str:
            return await netlink.call(hardware_address, index)

        return cls(
            store=open_store(options.store),
            netlink=netlink,
            rules=lambda made_for: network_rules(options.traffic, made_for),
            remove_other_mode=remove_other_mode,
            interface=interface,
            hardware_address=mac,
        )


class Daemon:
    def __init__(self, options: Options, parts: Parts | None = None):
        self.options = options
        self.parts = parts or Parts.real(options)
        self.started = process_start_time()
        self.store = self.parts.store
        self.netlink = self.parts.netlink
        self.instance = Instance(options.subnet_file, options.etcd_prefix)
        self.running: Running | None = None  # set once start() is done
        self.ready = asyncio.Event()
        self.subnet_file_written = False
        self.endpoint: HttpEndpoint | None = None
        self.kernel_watch: KernelWatch | None = None
        self.prober: MeshProber | None = None
        self.healer: PathHealer | None = None
        self.mtu_fixer: PathMtuFixer | None = None
        self.publisher: MeshPublisher | None = None
        self.ipv6 = False  # the network is dual-stack (EnableIPv6)
        self.traffic = self.parts.rules(RulesFor())  # until the network is known
        self.liveness = Liveness(self.netlink, self._datapath_problem)

    @property
    def r(self) -> Running:
        assert self.running is not None, "start() first"
        return self.running

    @property
    def programmed(self) -> bool:
        """A full reconcile has succeeded."""
        return self.running is not None and self.running.reconciler.programmed.is_set()

    @property
    def mesh_writes(self) -> int:
        return self.publisher.writes if self.publisher else 0

    # -- start-up --------------------------------------------------------------------------

    async def load_config(self) -> NetworkConfig:
        """The network config, waiting (1 s retries) until it exists and is valid."""
        return await load_network_config(self.store)

    async def _external_interface(self) -> ExtIface:
        return await self.parts.interface(self.options.iface_choice, self.ipv6)

    async def start(self) -> Running:
        o = self.options
        log.info(
            "pyflannel %s starting: %s %s, prefix %s",
            __version__,
            self.store.name,
            ",".join(o.etcd_endpoints),
            o.etcd_prefix,
        )
        cfg = check_supported(await self.load_config())
        timeline.step("config")
        self.ipv6 = cfg.enable_ipv6
        mode = "nftables" if cfg.enable_nftables else "iptables"
        for cidr in (cfg.cidr, cfg.cidr6):
            if cidr is not None:
                await self.parts.remove_other_mode(mode, cidr)
        if o.enable_br_netfilter:
            from pyflannel.traffic import br_netfilter

            for done in await asyncio.to_thread(br_netfilter.enable, cfg.enable_ipv6):
                log.info("--enable-br-netfilter: %s", done)
        ext = await self._external_interface()
        log.info("using interface %s", ext.describe())
        timeline.step("interface")
        backend, attrs = await self.parts.start_backend(
            BackendContext(self.netlink, cfg, ext, o.backend_settings)
        )
        timeline.step("backend")
        plane = DataPlane(
            backend,
            blackhole_own=o.ip_blackhole_route,
            sites=await self._site_link(cfg, ext, backend),
        )
        plane.also_own(previous_network(o.subnet_file))
        if cfg.cidr6 is not None:
            plane.also_own(previous_network6(o.subnet_file))
        self.traffic = self.parts.rules(
            RulesFor(
                nftables=cfg.enable_nftables,
                dual_stack=cfg.enable_ipv6,
                # a backend without a data plane: the operator routes, no rule unless asked for
                forward=None
                if plane.carries_traffic or "iptables_forward_rules" in o.given
                else False,
                peer_filter_port=plane.encapsulation_port if o.vxlan_peer_filter else None,
                site_port=plane.sites.device.port
                if plane.sites is not None and plane.sites.device is not None
                else None,
            )
        )
        identity = NodeIdentity(
            node_fingerprint(await self.parts.hardware_address(ext.index)),
            vtep_mac=vtep_mac_of(attrs),
        )
        keeper = LeaseKeeper(
            self.store,
            public_ip=ext.public_ip,
            ttl=o.subnet_lease_ttl,
            renew_margin=o.subnet_lease_renew_margin * 60,
            load_config=self.load_config,
            on_change=lambda old, new: moves.moved(old, new),
            identity=identity,
        )
        lease = await keeper.acquire(
            attrs,
            previous_subnet(o.subnet_file),
            previous_subnet6(o.subnet_file) if cfg.enable_ipv6 else None,
        )
        timeline.step("lease")
        await plane.assign(lease)
        timeline.step("assign")
        await self.traffic.setup(self._rule_networks(cfg, lease))
        timeline.step("rules")
        self._write_subnet_file(cfg, plane, lease)
        timeline.step("subnet.env")
        table = LeaseTable(cfg.cidr, own=lease.subnet, own_ip=ext.public_ip)
        watch = PeerWatch(
            self.store,
            table,
            lambda changes: peers.changed(changes),
            on_own_event=keeper.notice,
            on_snapshot=keeper.verify,
            first_listing=keeper.last_listing,
        )
        peers = PeerProgrammer(plane, watch.synced, self._peers_programmed, self.store.name)
        underlay = UnderlayFollower(
            ext, self._external_interface, plane, keeper, table, self._underlay_moved
        )
        moves = LeaseMoves(
            plane,
            peers,
            table,
            self.traffic,
            lambda new: self._rule_networks(cfg, new),
            lambda new: self._write_subnet_file(cfg, plane, new),
        )
        self.running = Running(
            cfg,
            plane,
            keeper,
            table,
            watch,
            ConfigWatch(self.store, cfg, o.reconcile_interval),
            underlay,
            peers,
            ReconcileLoop(plane, o.reconcile_interval, before=underlay.check),
            sites=SiteRecords(
                self.store,
                plane,
                plane.sites,
                lambda: keeper.lease or lease,
                self.traffic.set_site_members,
            )
            if plane.sites is not None
            else None,
        )
        return self.running

    async def _site_link(
        self, cfg: NetworkConfig, ext: ExtIface, backend: Backend
    ) -> SiteLink | None:
        """--site: this node's site and the site link (its device for a backend that does not
        encrypt), started."""
        o = self.options
        if not o.site:
            return None
        if not backend.data_plane:
            log.warning(
                "--site %s: the %s backend carries no traffic; ignored", o.site, backend.name
            )
            return None
        if cfg.enable_ipv6 or backend.name == "extension":
            where = "a dual-stack network" if cfg.enable_ipv6 else "the extension backend"
            raise BackendError(
                f"--site is not supported on {where} yet: run these nodes without --site"
            )
        link = SiteLink(
            self.netlink,
            cfg,
            ext,
            o.site,
            site_key_path(o.subnet_file),
            port=o.site_port,
            keepalive=o.site_keepalive,
            datapath=o.wireguard_datapath,
            own_device=backend.name != "wireguard",
        )
        await link.start()
        return link

    def _rule_networks(self, cfg: NetworkConfig, lease: Lease) -> list[tuple[Cluster, Cluster]]:
        """(cluster, pod subnet) per family, for the traffic rules."""
        networks: list[tuple[Cluster, Cluster]] = [(cfg.cidr, lease.subnet)]
        if cfg.cidr6 is not None and lease.ipv6_subnet is not None:
            networks.append((cfg.cidr6, lease.ipv6_subnet))
        return networks

    def _write_subnet_file(self, cfg: NetworkConfig, plane: DataPlane, lease: Lease) -> None:
        env = SubnetEnv.for_lease(cfg, lease, plane.mtu, self.options.ip_masq)
        if write_atomic(self.options.subnet_file, env.render()):
            subnets = str(lease.subnet) + (f", {lease.ipv6_subnet}" if env.ipv6_subnet else "")
            log.info("wrote %s: subnet %s, MTU %d", self.options.subnet_file, subnets, env.mtu)
        self.subnet_file_written = True

    # -- what follows a change -------------------------------------------------------------

    async def _peers_programmed(self) -> None:
        await self.traffic.set_peers(self.r.plane.encapsulating_peers())

    def _underlay_moved(self) -> None:
        r = self.r
        self._write_subnet_file(r.network, r.plane, r.lease)  # the MTU may have changed

    def _datapath_problem(self) -> str | None:
        return self.running.plane.datapath_problem() if self.running else None

    def _probe_target(self, half: Peer | Peer6) -> IPv4Address | IPv6Address:
        return self.r.plane.probe_target(half)

    def _healer(self, plane: DataPlane, prober: MeshProber) -> PathHealer | None:
        """The path healer, where the backend has a second encapsulation and may use it."""
        from pyflannel.ops.mesh.healer import PathHealer

        paths = plane.alternate_paths
        if not self.options.heal_paths or paths is None:
            return None
        why_not = paths.why_not_healing()
        if why_not is not None:
            log.info("path healing off: %s", why_not)
            return None
        o = self.options
        return PathHealer(paths, o.probe_interval, o.probe_rate, prober.view)

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        self.parts.privileges()
        self.instance.acquire()
        o = self.options
        timeline.step("options")
        self.endpoint = await start_health_endpoint(
            routes(
                self.liveness, self.ready, self.snapshot, self.datapath_stats, StatusAnswers(self)
            ),
            o.healthz_ip,
            o.healthz_port,
            pinned="healthz_port" in o.given,
            instance=self.instance,
        )
        timeline.step("endpoint")
        r = await self.start()
        async with asyncio.TaskGroup() as tasks:
            if r.sites is not None:
                tasks.create_task(r.sites.follow(), name="node-records")
                tasks.create_task(r.sites.publish(), name="node-record")
                # peers placed by their records from the first programming on (bounded: a
                # record read later places them again)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SITE_RECORDS_WAIT):
                        await r.sites.read.wait()
            tasks.create_task(r.watch.run(), name="peer-watch")
            tasks.create_task(r.peers.run(), name="peer-changes")
            await r.watch.synced.wait()
            timeline.step("peers")
            # Only now is the desired state known: reconciling earlier would remove the
            # entries of every peer. Ready means programmed: wait for the first full pass.
            tasks.create_task(r.reconciler.run(), name="reconcile")
            await r.reconciler.programmed.wait()
            timeline.step("programmed")
            if self.parts.kernel_watch:
                self.kernel_watch = KernelWatch(r.plane.watched, r.plane.damaged)
                self.kernel_watch.start()
            tasks.create_task(r.keeper.run(), name="lease-keeper")
            tasks.create_task(report_drops(self.datapath_stats), name="drop-report")
            tasks.create_task(r.config_watch.run(), name="config-watch")
            if o.probe_interval > 0 and r.plane.carries_traffic:
                from pyflannel.ops.mesh.prober import MeshProber
                from pyflannel.ops.mesh.publisher import MeshPublisher

                self.prober = MeshProber(
                    peers=lambda: list(r.plane.peers.values()),
                    target=self._probe_target,
                    mtu=lambda: r.plane.mtu,
                    interval=o.probe_interval,
                    rate=o.probe_rate,
                )
                self.publisher = MeshPublisher(
                    self.prober, self.store, lambda: r.lease, lambda: r.ext.public_ip
                )
                if o.fix_path_mtu:
                    from pyflannel.ops.mesh.mtu_fixer import PathMtuFixer

                    self.mtu_fixer = PathMtuFixer(
                        self.prober,
                        r.plane.set_path_mtu,
                        self.traffic.set_clamps,
                        lambda: r.plane.mtu,
                    )
                    self.prober.after_round = self.mtu_fixer.after_round
                tasks.create_task(self.prober.run(), name="mesh-prober")
                tasks.create_task(self.publisher.run(), name="mesh-summary")
                self.healer = self._healer(r.plane, self.prober)
                if self.healer is not None:
                    tasks.create_task(self.healer.run(), name="path-healer")
            if self.traffic.enabled:
                from pyflannel.traffic.repair import RuleRepair

                repair = RuleRepair(self.traffic, o.iptables_resync)
                tasks.create_task(repair.run(), name="iptables")
            self.ready.set()
            log.info(
                "ready in %.2f s: subnet %s, %d peers, backend %s on %s",
                time.time() - self.started,
                r.lease.subnet,
                len(r.table.peers()),
                r.plane.name,
                r.plane.device_name,
            )
            sd_notify.notify(f"READY=1\nSTATUS={self.summary()}")
            timeline.step("ready")
            log.debug("start-up steps: %s", timeline.render())
            interval = sd_notify.watchdog_interval()
            if interval:
                tasks.create_task(self.liveness.watchdog(interval, self.summary), name="watchdog")
                log.info("systemd watchdog: pinging every %.1f s while alive", interval)

    def summary(self) -> str:
        """The one line systemd shows as the unit's status."""
        return summary(self)

    def snapshot(self) -> DaemonSnapshot:
        return daemon_snapshot(self)

    async def datapath_stats(self) -> dict | None:
        """The userspace data path's counters (None without one). Asking the workers waits
        for their answers: in a thread, never on this loop."""
        if self.running is None:
            return None
        return await asyncio.to_thread(self.running.plane.datapath_stats)

    async def close(self) -> None:
        if self.kernel_watch is not None:
            self.kernel_watch.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.running is not None:
            await self.running.plane.close()
        await self.store.close()
        self.netlink.close()
        self.instance.release()


async def serve(options: Options, parts: Parts | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status for the process."""
    daemon = Daemon(options, parts)
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
    """When this process started (wall clock, to a clock tick), so "ready in" counts the
    interpreter and the imports too. /proc/self/stat gives the start in ticks since boot;
    CLOCK_BOOTTIME is now on that same clock (/proc/stat's btime is whole seconds: up to a
    second off)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_start
    except (OSError, ValueError, IndexError):
        return time.time()
