"""The daemon's state as the operations side sees it: a typed snapshot the daemon publishes
(``Daemon.snapshot()``), read by ``/status`` and ``/metrics`` instead of the daemon's objects,
and the few live questions they may ask (``StatusIO``).

Its parts are the status document's own sections (``ops/status/document.py``): a new field
of the lease, the store, the traffic rules, a probed or healed path is one field here, and
/status, ``pyflannel status --json`` and the offline document carry it (``schema.to_json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pyflannel.backend.dataplane import BackendSnapshot
from pyflannel.backend.plan import KernelState
from pyflannel.kernel.iface import ExtIface
from pyflannel.schema import FLATTEN, optional
from pyflannel.subnet.manager import StoreFacts


@dataclass(frozen=True)
class LeaseView:
    subnet: str | None  # None: no lease (status without the daemon, etcd unreachable)
    expires_in_s: float | None  # None for a reservation, or unknown
    reservation: bool = False
    last_renewal: float | None = None  # wall clock
    renewals: int = 0
    losses: int = 0
    ipv6_subnet: str | None = optional()  # dual-stack
    last_renewal_took_s: float | None = optional()  # from the first try to etcd's answer


@dataclass(frozen=True)
class StoreStatus:
    """The subnet store as this node sees it: neutral fields, and the store's own facts
    (etcd: its endpoints, leader, and the revision the watch is at)."""

    kind: str  # "etcd": also the name of its section in the status document
    current: str = ""  # the member / server in use
    reachable: bool = False
    last_error: str = ""
    watch_restarts: int = 0
    relists: int = 0
    facts: StoreFacts = field(default=StoreFacts(), metadata=FLATTEN)
    # etcd's members as the member in use lists them, each with its own view (etcd/cluster.py
    # says their fields); asked live by /status, empty in the snapshot
    members: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ProbeView:
    """A peer's path as the mesh prober last judged it."""

    state: str  # a PeerHealth value
    rtt_ms: float | None  # median of the recent round trips
    rtt_max_ms: float | None
    loss: float
    since: float  # wall clock of the last change of state
    # the path's MTU where it was fixed (--fix-path-mtu: smaller than the pod MTU), since when
    # and how many probes measuring it took
    path_mtu: int | None = optional()
    path_mtu_since: float = optional(0.0)
    path_mtu_probes: int = optional(0)


@dataclass(frozen=True)
class HealView:
    """A peer's encapsulation as the path healer chose it, and why."""

    via: str  # "vxlan" | "udp"
    # the healer's choice for a peer it moves (all set); None for a peer it cannot move
    since: float | None = optional()
    why: str | None = optional()  # "" while on VXLAN
    trying: bool | None = optional()  # on UDP, not yet answered over it
    clean_rounds: int | None = optional()
    back_after: int | None = optional()
    moves: int | None = optional()
    cannot_heal: str = optional("")  # why this peer cannot move to UDP


@dataclass(frozen=True)
class TrafficView:
    """The traffic rules (the status document's ``iptables`` section, whichever the mode)."""

    mode: str = "iptables"  # "iptables" | "nftables"
    enabled: bool = False
    masquerade: bool = False
    forward: bool = False
    rules_set: bool = False  # rules computed (they may still have drifted: ask StatusIO)
    last_problem: str = ""
    restores: int = 0
    present: bool = False  # in the kernel as computed (asked live by /status)
    # --site, iptables mode: datagrams to the site link's port from an address no node of the
    # network has (WireGuard drops them); None: not counted
    site_strangers: int | None = None


@dataclass(frozen=True)
class StoreAccess:
    """How this daemon reaches its store, for the tools typed beside it (``pyflannel trace``,
    ``doctor``): its endpoints, TLS files and user, and where its password is (its command
    line or its environment), never the password itself."""

    endpoints: tuple[str, ...]
    cafile: str
    certfile: str
    keyfile: str
    username: str
    password_in: str  # "", "--etcd-password" or "FLANNELD_ETCD_PASSWORD"


@dataclass(frozen=True)
class InstanceView:
    etcd_prefix: str
    subnet_file: str
    healthz: str
    others: tuple[str, ...]  # other networks' daemons on this host
    access: StoreAccess | None = None


@dataclass(frozen=True)
class DaemonState:
    running: bool
    version: str = ""
    reason: str = optional("")  # why it is not running (no answer on its endpoint, ...)
    pid: int | None = optional()
    started: float | None = optional()  # wall clock
    ready: bool = False
    not_ready: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshCounters:
    probes_sent: int = 0
    summaries_written: int = 0  # path summaries written to the store
    path_moves: dict[str, int] = field(default_factory=dict)  # by encapsulation moved to
    path_rounds: int = 0


@dataclass(frozen=True)
class DaemonSnapshot:
    daemon: DaemonState
    config_change: str
    instance: InstanceView
    store: StoreStatus
    network: str | None
    network6: str | None
    interface: ExtIface | None
    lease: LeaseView | None
    backend: BackendSnapshot | None
    subnet_env_problems: tuple[str, ...]
    traffic: TrafficView
    mesh: dict[str, ProbeView]  # peer subnet -> its probed path (ops/mesh/prober.py); {} when off
    counters: MeshCounters = field(default_factory=MeshCounters)  # probes, summaries, moves
    # peer subnet -> the encapsulation it is sent over and why (ops/mesh/healer.py); {} when off
    paths: dict[str, HealView] = field(default_factory=dict)


class StatusIO(Protocol):
    """Live questions /status asks the daemon (each an I/O of its own)."""

    async def store_members(self) -> list[dict]: ...

    async def kernel_state(self) -> KernelState | None: ...

    async def device_present(self) -> bool: ...

    async def datapath_stats(self) -> dict | None: ...  # validated into DatapathStats

    async def rules_present(self) -> bool: ...
