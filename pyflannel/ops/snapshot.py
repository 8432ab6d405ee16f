"""The daemon's state as the operations side sees it: a typed snapshot the daemon publishes
(``Daemon.snapshot()``), read by ``/status`` and ``/metrics`` instead of the daemon's objects,
and the few live questions they may ask (``StatusIO``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pyflannel.backend.base import BackendSnapshot
from pyflannel.backend.plan import KernelState
from pyflannel.kernel.iface import ExtIface


@dataclass(frozen=True)
class LeaseView:
    subnet: str
    expires_in_s: float | None  # None for a reservation
    reservation: bool
    last_renewal: float | None  # wall clock
    renewals: int
    losses: int
    ipv6_subnet: str | None = None  # dual-stack
    last_renewal_took_s: float | None = None  # from the first try to etcd's answer


@dataclass(frozen=True)
class StoreStatus:
    """The subnet store as this node sees it: neutral fields, and the store's own details
    (etcd: its endpoints and the revision the watch is at)."""

    kind: str  # "etcd": also the name of its section in the status document
    current: str  # the member / server in use
    reachable: bool
    last_error: str
    watch_restarts: int
    relists: int
    details: dict


@dataclass(frozen=True)
class TrafficView:
    mode: str  # "iptables" | "nftables"
    enabled: bool
    masquerade: bool
    forward: bool
    rules_set: bool  # rules computed (they may still have drifted: ask StatusIO)
    last_problem: str
    restores: int


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
class DaemonSnapshot:
    pid: int
    version: str
    started: float
    ready: bool
    not_ready: tuple[str, ...]
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
    mesh: dict[str, dict]  # peer subnet -> probe view (ops/mesh/prober.py); {} when off
    probes_sent: int = 0
    mesh_writes: int = 0  # mesh summaries written to the store
    # peer subnet -> the encapsulation it is sent over and why (ops/mesh/healer.py); {} when off
    paths: dict[str, dict] = field(default_factory=dict)
    path_moves: dict[str, int] = field(default_factory=dict)  # moves made, by encapsulation
    path_rounds: int = 0  # the healer's probe rounds done


class StatusIO(Protocol):
    """Live questions /status asks the daemon (each an I/O of its own)."""

    async def store_members(self) -> list[dict]: ...

    async def kernel_state(self) -> KernelState | None: ...

    async def device_present(self) -> bool: ...

    async def datapath_stats(self) -> dict | None: ...

    async def rules_present(self) -> bool: ...
