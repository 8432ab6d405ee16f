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
from ipaddress import IPv4Address

from pyflannel import sd_notify
from pyflannel.backend.base import Backend
from pyflannel.backend.udp.backend import UdpBackend, parse_udp_port
from pyflannel.backend.udp.path import UdpTuning, default_workers
from pyflannel.backend.udp.tun import TUN_NAME
from pyflannel.backend.vxlan.backend import VxlanBackend
from pyflannel.backoff import Backoff, Outage
from pyflannel.config import NetworkConfig, config_changes, parse_network_config
from pyflannel.errors import (
    BackendError,
    ConfigError,
    EtcdUnavailable,
    FlannelError,
    InterfaceError,
)
from pyflannel.etcd.client import EtcdClient, TLSFiles
from pyflannel.etcd.registry import Registry
from pyflannel.http_endpoint import HttpEndpoint, as_json, text
from pyflannel.iface import ExtIface, external_interface, hardware_address
from pyflannel.instance import Instance, instances_beside
from pyflannel.kernel_watch import Damage, KernelWatch, Watched
from pyflannel.lease_keeper import LeaseKeeper
from pyflannel.netlink import Netlink
from pyflannel.options import Options
from pyflannel.peer_watch import PeerWatch
from pyflannel.privileges import check_privileges
from pyflannel.status.live import daemon_status
from pyflannel.subnet.env_file import (
    SubnetEnv,
    previous_network,
    previous_subnet,
    write_atomic,
)
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.owner import NodeIdentity, node_fingerprint, vtep_mac_of
from pyflannel.subnet.table import LeaseTable, PeerChanges
from pyflannel.traffic import TrafficRules

log = logging.getLogger(__name__)

CONFIG_RETRY = 1.0  # seconds, as upstream
CONFIG_REMINDER = 30.0  # repeat an unchanged config error this often, not every second
PEER_LOG_LIMIT = 10  # log peers one by one up to this many per batch, else a summary
DROP_REPORT_INTERVAL = 10.0  # seconds
HEALTHZ_PORT_TRIES = 10  # the default port and the next nine, one per network on a host
REPAIR_SETTLE = 0.05  # seconds to wait after a kernel notification before reconciling


class Daemon:
    def __init__(self, options: Options):
        self.options = options
        self.started = process_start_time()
        self.client = EtcdClient(
            options.etcd_endpoints,
            username=options.etcd_username,
            password=options.etcd_password,
            tls=TLSFiles(options.etcd_cafile, options.etcd_certfile, options.etcd_keyfile),
        )
        self.registry = Registry(self.client, options.etcd_prefix)
        self.instance = Instance(options.subnet_file, options.etcd_prefix)
        self.netlink = Netlink()
        self.network: NetworkConfig | None = None
        self.ext: ExtIface | None = None
        self.backend: Backend | None = None
        self.keeper: LeaseKeeper | None = None
        self.table: LeaseTable | None = None
        self.watch: PeerWatch | None = None
        self.ready = asyncio.Event()
        self.programmed = asyncio.Event()  # a full reconcile has succeeded
        self._pending: dict = {}  # subnet -> ("added" | "removed", lease), not yet applied
        self._pending_wake = asyncio.Event()
        self.subnet_file_written = False
        self.endpoint: HttpEndpoint | None = None
        self.kernel_watch: KernelWatch | None = None
        self._underlay_problem = ""
        self.config_change = ""  # how the config in etcd differs from the running one
        self.traffic = TrafficRules(
            masquerade=options.ip_masq,
            forward=options.iptables_forward_rules,
            random_fully_disabled=options.ip_masq_fully_random_disable,
        )

    # -- start-up --------------------------------------------------------------------------

    async def load_config(self) -> NetworkConfig:
        """The network config, waiting (1 s retries) until it exists and is valid."""
        last_error, last_logged = "", 0.0
        etcd = Outage(log, "etcd unreachable while reading the network config")
        while True:
            try:
                cfg = parse_network_config(await self.registry.network_config())
                etcd.ok()
                return cfg
            except EtcdUnavailable as e:
                etcd.failed(e, f"retrying every {CONFIG_RETRY:.0f} s")
            except ConfigError as e:
                etcd.ok()
                now = time.monotonic()
                if str(e) != last_error or now - last_logged > CONFIG_REMINDER:
                    log.error(
                        "network config at %s: %s; retrying every %.0f s",
                        self.registry.config_key,
                        e,
                        CONFIG_RETRY,
                    )
                    last_error, last_logged = str(e), now
            await asyncio.sleep(CONFIG_RETRY)

    async def _external_interface(self) -> ExtIface:
        o = self.options
        can_reach = IPv4Address(o.iface_can_reach) if o.iface_can_reach else None
        return await self.netlink.call(
            external_interface,
            iface=o.iface,
            iface_regex=o.iface_regex,
            public_ip=o.public_ip_address,
            can_reach=can_reach,
        )

    async def _start_backend(self, cfg: NetworkConfig, ext: ExtIface) -> tuple[Backend, LeaseAttrs]:
        """The backend for this node, its devices ready, and the attributes to advertise."""
        o = self.options
        kind = cfg.backend_type.lower()
        if kind == "udp":
            backend = UdpBackend(
                self.netlink,
                cfg,
                ext,
                parse_udp_port(cfg.backend),
                tuning=self._udp_tuning(),
            )
            return backend, await backend.prepare()
        if kind != "vxlan":
            raise BackendError(
                f"backend type {cfg.backend_type!r} is not supported by this pyflannel "
                "(supported: vxlan, udp)"
            )
        if o.backend_fallback == "udp":
            return await self._fall_back(cfg, ext, "forced by --backend-fallback=udp")
        udp_port = None if o.backend_fallback == "off" else o.udp_fallback_port
        backend = VxlanBackend(self.netlink, cfg, ext, udp_port, self._udp_tuning())
        try:
            return backend, await backend.prepare()
        except BackendError as e:
            if o.backend_fallback == "off":
                raise BackendError(f"{e} (and --backend-fallback=off)") from e
            return await self._fall_back(cfg, ext, str(e))

    async def _fall_back(self, cfg: NetworkConfig, ext: ExtIface, reason: str):
        log.error(
            "VXLAN FALLBACK: this node uses UDP encapsulation (port %d) instead of VXLAN: %s. "
            "pyflannel VXLAN peers reach it over UDP; upstream flannel VXLAN nodes cannot.",
            self.options.udp_fallback_port,
            reason,
        )
        backend = UdpBackend(
            self.netlink,
            cfg,
            ext,
            self.options.udp_fallback_port,
            fallback_reason=reason,
            tuning=self._udp_tuning(),
        )
        return backend, await backend.prepare()

    def _udp_tuning(self) -> UdpTuning:
        o = self.options
        return UdpTuning(
            datapath=o.udp_datapath,
            fastpath=o.udp_fastpath,
            workers=o.udp_workers or default_workers(),
            verbosity=o.v,
        )

    async def start(self) -> None:
        o = self.options
        log.info(
            "pyflannel starting: etcd %s, prefix %s", ",".join(o.etcd_endpoints), o.etcd_prefix
        )
        plaintext = [e.url for e in self.client.endpoints if not e.tls]
        if plaintext and (o.etcd_cafile or o.etcd_certfile):
            log.warning(
                "TLS files are given but %s use http://; TLS applies to https:// only",
                ", ".join(plaintext),
            )
        cfg = self.network = await self.load_config()
        if not cfg.enable_ipv4:
            raise ConfigError("EnableIPv4 is false: IPv6-only networks are not supported")
        if cfg.enable_ipv6:
            log.warning("EnableIPv6 is set, but pyflannel carries IPv4 only; IPv6 is ignored")
        self.ext = await self._external_interface()
        log.info("using interface %s", self.ext.describe())
        self.backend, attrs = await self._start_backend(cfg, self.ext)
        self.backend.also_own(previous_network(o.subnet_file))
        if o.vxlan_peer_filter and isinstance(self.backend, VxlanBackend):
            self.traffic.vxlan_port = self.backend.spec.effective_port
        identity = NodeIdentity(
            node_fingerprint(await self.netlink.call(hardware_address, self.ext.index)),
            vtep_mac=vtep_mac_of(attrs),
        )
        self.registry.lease_ids = identity.new_lease_id
        self.keeper = LeaseKeeper(
            self.registry,
            public_ip=self.ext.public_ip,
            ttl=o.subnet_lease_ttl,
            renew_margin=o.subnet_lease_renew_margin * 60,
            load_config=self.load_config,
            on_change=self._lease_changed,
            identity=identity,
        )
        lease = await self.keeper.acquire(attrs, previous_subnet(o.subnet_file))
        await self.backend.assign(lease)
        await self.traffic.setup(cfg.network, lease.subnet)
        self._write_subnet_file(lease)
        self.table = LeaseTable(cfg.network, own=lease.subnet, own_ip=self.ext.public_ip)
        self.watch = PeerWatch(
            self.registry,
            self.table,
            self._peers_changed,
            on_own_event=self.keeper.notice,
            on_snapshot=self.keeper.verify,
            first_listing=self.keeper.last_listing,
        )

    async def _watch_config(self) -> None:
        """Notice a changed ``<prefix>/config`` (checked every --reconcile-interval): the
        daemon keeps running with the config it started with (changing the network under
        running pods is a restart's job), and says once what changed and that a restart
        applies it; status shows it until then."""
        reported = b""
        while True:
            await asyncio.sleep(self.options.reconcile_interval)
            try:
                raw = await self.registry.network_config()
                problem, changes = "", config_changes(self.network, parse_network_config(raw))
            except ConfigError as e:
                raw, problem, changes = str(e).encode(), str(e), []
            except FlannelError:
                continue  # etcd trouble: the peer watch reports it
            if raw == reported:
                continue
            reported = raw
            if problem:
                self.config_change = f"the config in etcd is now unusable: {problem}"
                log.error(
                    "network config at %s: %s; this daemon keeps running with the config "
                    "it started with",
                    self.registry.config_key,
                    problem,
                )
            elif changes:
                self.config_change = "; ".join(changes)
                log.warning(
                    "network config at %s changed: %s. This daemon keeps running with the "
                    "config it started with; restart it to apply the change",
                    self.registry.config_key,
                    self.config_change,
                )
            elif self.config_change:
                self.config_change = ""
                log.info(
                    "network config at %s is again the one this daemon runs with",
                    self.registry.config_key,
                )

    def _write_subnet_file(self, lease: Lease) -> None:
        env = SubnetEnv(self.network.network, lease.subnet, self.backend.mtu, self.options.ip_masq)
        if write_atomic(self.options.subnet_file, env.render()):
            log.info("wrote %s: subnet %s, MTU %d", self.options.subnet_file, lease.subnet, env.mtu)
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
        if not self.watch.synced.is_set():
            await self._program_peers(changes)
            return
        for lease in changes.removed:
            self._pending[lease.subnet] = ("removed", lease)
        for lease in changes.added:
            self._pending[lease.subnet] = ("added", lease)
        self._pending_wake.set()

    async def _apply_peer_changes(self) -> None:
        while True:
            await self._pending_wake.wait()
            self._pending_wake.clear()
            pending, self._pending = self._pending, {}
            await self._program_peers(
                PeerChanges(
                    added=[lease for kind, lease in pending.values() if kind == "added"],
                    removed=[lease for kind, lease in pending.values() if kind == "removed"],
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
        await self.backend.update_peers(changes)
        await self.traffic.set_peers(
            [str(p.public_ip) for p in self.backend.peers.values() if p.encap == "vxlan"]
        )

    async def _lease_changed(self, old: Lease | None, new: Lease) -> None:
        await self.backend.assign(new)
        await self._peers_changed(self.table.set_own(new.subnet))
        await self.traffic.setup(self.network.network, new.subnet)
        self._write_subnet_file(new)

    async def _follow_underlay(self) -> None:
        """Has the external interface or its address changed? Then move the tunnel endpoint
        and re-advertise the lease with the new public IP, keeping the subnet."""
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
        if ext == self.ext:
            return
        log.warning(
            "UNDERLAY CHANGED: %s -> %s; moving the tunnel endpoint and updating the lease",
            self.ext.describe(),
            ext.describe(),
        )
        self.ext = ext
        attrs = await self.backend.move_underlay(ext)
        self.table.own_ip = ext.public_ip
        self.keeper.change_attrs(attrs)
        self._write_subnet_file(self.keeper.lease)  # the MTU may have changed with it

    async def _reconcile_once(self) -> bool:
        """One full reconcile; True if the kernel now matches the desired state."""
        await self._follow_underlay()
        try:
            report = await self.backend.reconcile()
        except FlannelError as e:
            log.error("could not reconcile the data plane: %s; retrying", e)
            return False
        if report.repaired:
            log.warning("kernel state repaired: %s", "; ".join(report.repaired[:20]))
        return not report.failed

    async def _reconcile_loop(self) -> None:
        interval = self.options.reconcile_interval
        backoff = Backoff(first=1.0, cap=interval)
        while True:
            if not await self._reconcile_once():
                await asyncio.sleep(backoff.next())
                continue
            self.programmed.set()
            backoff.reset()
            try:
                await asyncio.wait_for(self.backend.repair_wanted.wait(), interval)
                await asyncio.sleep(REPAIR_SETTLE)  # let a burst of notifications arrive
            except TimeoutError:
                pass
            self.backend.repair_wanted.clear()

    async def run(self) -> None:
        check_privileges()
        self.instance.acquire()
        await self._start_endpoint()
        await self.start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.watch.run(), name="peer-watch")
            tasks.create_task(self._apply_peer_changes(), name="peer-changes")
            await self.watch.synced.wait()
            # Only now is the desired state known: reconciling earlier would remove the
            # entries of every peer. Ready means programmed: wait for the first full pass.
            tasks.create_task(self._reconcile_loop(), name="reconcile")
            await self.programmed.wait()
            self.kernel_watch = KernelWatch(self._watched, self._kernel_damaged)
            self.kernel_watch.start()
            tasks.create_task(self.keeper.run(), name="lease-keeper")
            tasks.create_task(self._report_drops(), name="drop-report")
            tasks.create_task(self._watch_config(), name="config-watch")
            if self.traffic.enabled:
                tasks.create_task(
                    self.traffic.resync_forever(self.options.iptables_resync), name="iptables"
                )
            self.ready.set()
            log.info(
                "ready in %.2f s: subnet %s, %d peers, backend %s on %s",
                time.time() - self.started,
                self.keeper.lease.subnet,
                len(self.table.peers()),
                self.backend.name,
                self.backend.device_name,
            )
            sd_notify.notify(f"READY=1\nSTATUS={self.summary()}")
            interval = sd_notify.watchdog_interval()
            if interval:
                tasks.create_task(self._watchdog(interval), name="watchdog")
                log.info("systemd watchdog: pinging every %.1f s while alive", interval)

    def _watched(self) -> Watched:
        devices = self.backend.devices()
        names = {self.backend.device_name}
        if devices.tun is not None:
            names.add(TUN_NAME)
        return Watched(
            frozenset(names),
            frozenset(i for i in (devices.vxlan,) if i),
            self.ext.index,
            devices.networks,
        )

    def _kernel_damaged(self, damage: Damage) -> None:
        table, key, what = damage
        if table in ("route", "neigh", "fdb") and self.backend.explains(table, key):
            return  # our own doing
        log.debug("kernel: %s; reconciling", what)
        self.backend.repair_wanted.set()

    def summary(self) -> str:
        """The one line systemd shows as the unit's status."""
        return (
            f"subnet {self.keeper.lease.subnet}, {len(self.backend.peers)} peers, "
            f"{self.backend.name} on {self.backend.device_name}"
            + ("" if self.watch.connected else ", etcd unreachable")
        )

    async def alive(self) -> str:
        """Empty if the daemon is alive, else why not: the event loop runs (we are here),
        the netlink thread answers, and a userspace data path has not died."""
        try:
            await asyncio.wait_for(self.netlink.call(lambda ipr: None), 5)
        except TimeoutError:
            return "the netlink worker does not answer"
        problem = self.backend.datapath_problem() if self.backend else None
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

    async def _start_endpoint(self) -> None:
        """Serve the health endpoint. With the default port taken (by the daemon of another
        network on this host, usually) the next free port is used and said; a port given
        with --healthz-port is used or not at all. Either way the instance record says where
        it is, so ``pyflannel status`` for this network finds it."""
        o = self.options
        if not o.healthz_port:
            return
        endpoint = HttpEndpoint(
            {
                "/healthz": self._healthz,
                "/readyz": self._readyz,
                "/metrics": self._metrics,
                "/status": self._status,
            }
        )
        tries = 1 if "healthz_port" in o.given else HEALTHZ_PORT_TRIES
        for port in range(o.healthz_port, min(o.healthz_port + tries, 65536)):
            try:
                await endpoint.start(o.healthz_ip, port)
                break
            except OSError as e:
                taken, why = port, e.strerror
        else:
            log.error(
                "health endpoint on %s:%d unavailable: %s (%s); continuing without it",
                o.healthz_ip,
                o.healthz_port,
                why,
                self._holder_of(taken),
            )
            return
        self.endpoint = endpoint
        if port != o.healthz_port:
            log.warning(
                "health endpoint on %s:%d instead of %d, which is in use (%s); "
                "`pyflannel status --subnet-file=%s` finds it, --healthz-port fixes it",
                o.healthz_ip,
                port,
                o.healthz_port,
                self._holder_of(o.healthz_port),
                o.subnet_file,
            )
        self.instance.publish(healthz=f"{o.healthz_ip}:{port}")

    def _holder_of(self, port: int) -> str:
        """Who has ``port``, as far as the instance records beside our subnet file know."""
        for other in instances_beside(self.options.subnet_file):
            if other.pid != os.getpid() and other.healthz.endswith(f":{port}"):
                return f"by pyflannel {other.describe()}"
        return "by another process"

    async def _healthz(self):
        problem = await self.alive()
        return (
            text(500, f"flanneld is not healthy: {problem}\n")
            if problem
            else text(200, "flanneld is running")
        )

    async def _readyz(self):
        if self.ready.is_set():
            return text(200, "flanneld is ready")
        return text(503, "flanneld is not ready yet")

    async def _metrics(self):
        from pyflannel.metrics import metrics_text  # prometheus_client: only when scraped

        stats = await self.datapath_stats()
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(self, stats)

    async def datapath_stats(self) -> dict | None:
        """The userspace data path's counters (None without one). Asking the workers waits
        for their answers: in a thread, never on this loop."""
        if self.backend is None:
            return None
        return await asyncio.to_thread(self.backend.datapath_stats)

    async def _status(self):
        return as_json(200, await daemon_status(self))

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
        if self.backend is not None:
            self.backend.close()
        await self.client.close()
        self.netlink.close()
        self.instance.release()


async def serve(options: Options) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status for the process."""
    daemon = Daemon(options)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
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
        for e in _leaves(errors):
            log.error("%s", e)
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
