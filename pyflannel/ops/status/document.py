"""The status document's schema: what ``/status`` serves, ``pyflannel status --json`` prints,
the offline status builds from the kernel and the store, and report, trace, doctor and the
tools beside the daemon read. One typed class per section; the snapshot's own parts
(``ops/snapshot.py``: lease, store, traffic rules, instance, probed and healed paths) are
sections as they are.

A new field is one edit: a field in its section's class (and filling it where it is known);
``to_json`` serialises it and ``parse`` reads it back, validated (``schema.py``). A document
from outside (the daemon's answer) is parsed once, at the boundary: ``parse`` raises
``SchemaError`` naming the field that is wrong.

The JSON shape (kept from the first release, tools read it): the store's section is named by
its kind (``"store": "etcd", "etcd": {...}``); a backend's own facts sit beside the common
ones in ``backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.sites.placement import PlacementView
from pyflannel.ops.snapshot import (
    DaemonState,
    HealView,
    InstanceView,
    LeaseView,
    MeshCounters,
    ProbeView,
    StoreStatus,
    TrafficView,
)
from pyflannel.schema import FLATTEN, SchemaError, from_json, optional, to_json
from pyflannel.traffic.br_netfilter import BridgeNf

__all__ = ["DaemonState", "MeshCounters", "SchemaError", "StatusDoc"]


@dataclass(frozen=True)
class InterfaceView:
    """The external interface the overlay runs over."""

    name: str
    index: int
    mtu: int
    address: str
    public_ip: str
    address6: str = optional("")
    public_ipv6: str = optional("")


@dataclass(frozen=True)
class Flow:
    packets: int
    bytes: int
    drops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FastPath:
    tx: bool = False  # sent in batches (sendmmsg / GSO)
    rx: bool = False  # received in batches
    tso: bool = False
    off: dict[str, str] = field(default_factory=dict)  # half -> why it is per packet


@dataclass(frozen=True)
class PacketPriority:
    """The packet threads' CPU priority (backend/udp/priority.py)."""

    mode: str = "normal"
    realtime: bool = False  # every worker's packet thread is real time now
    raised: int = 0  # times a packet thread went real time
    demotions: int = 0  # windows that ended real time for using more than the budget
    refused: str = ""


@dataclass(frozen=True)
class DatapathStats:
    """The UDP data path's counters, summed over its workers (backend/udp/pool.py ``merge``):
    they arrive from the worker processes, and are parsed here before anything reads them."""

    datapath: str | None
    to_peers: Flow
    from_peers: Flow
    icmp_unreachable_sent: int = 0
    fastpath: FastPath = FastPath()
    workers: int = 0
    peers: int = 0
    per_worker: tuple[dict[str, Any], ...] = ()
    priority: PacketPriority | None = None
    unanswered: int = optional(0)
    time: float | None = None

    @classmethod
    def parse(cls, data: dict | None) -> DatapathStats | None:
        return None if data is None else from_json(cls, data, "udp")


@dataclass(frozen=True)
class BackendSection:
    type: str | None
    device: str | None
    mtu: int | None
    device_present: bool
    mtu_reason: str = ""
    udp: DatapathStats | None = None
    repairs: int = 0
    reconcile_passes: int = 0
    probe_host: int = 0  # which address of a peer's subnet answers probes (trace, doctor)
    # The backend's own facts (vxlan: port, vni, vtep_mac, device6, vtep_mac6; udp: port,
    # fallback; wireguard: port, mode, public_key, datapath; extension: commands, failed; a
    # backend defined elsewhere: its own): beside the common ones in the JSON, and every key
    # the common ones do not claim when read back.
    details: dict[str, Any] = field(default_factory=dict, metadata=FLATTEN)

    def fact(self, name: str) -> Any:
        return self.details.get(name)


@dataclass(frozen=True)
class PeerHalf6:
    """The IPv6 half of a dual-stack peer's row, or why it is not programmed (``problem``)."""

    subnet: str = optional("")
    public_ip: str = optional("")
    encap: str = optional("")
    vtep_mac: str | None = optional()
    neighbour: bool | None = optional()  # None: not needed by this encapsulation
    fdb: bool | None = optional()
    route: bool | None = optional()
    path: ProbeView | None = optional()
    endpoint: PeerEndpoint | None = optional()
    problem: str = optional("")

    @property
    def programmed(self) -> bool:
        return bool(self.subnet)


@dataclass(frozen=True)
class PeerRow:
    """One peer: what it needs and whether the kernel has it (None: not needed), its probed
    path and, when the healer looked at it, its encapsulation."""

    subnet: str
    public_ip: str
    encap: str
    vtep_mac: str | None = None
    udp_port: int | None = None
    public_key: str = optional("")
    neighbour: bool | None = None
    fdb: bool | None = None
    route: bool | None = None
    path: ProbeView | None = None
    heal: HealView | None = optional()
    endpoint: PeerEndpoint | None = optional()  # WireGuard: where it is sent, as the device has it
    ipv6: PeerHalf6 | None = optional()
    site: str = optional("")  # its site (--site), from its node record
    placement: PlacementView | None = optional()  # where it is and how it is reached (--site)

    def halves(self) -> tuple[PeerRow | PeerHalf6, ...]:
        """This row and its programmed IPv6 half: a path each."""
        return (self, self.ipv6) if self.ipv6 is not None and self.ipv6.programmed else (self,)


@dataclass(frozen=True)
class SubnetEnvState:
    path: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusDoc:
    daemon: DaemonState
    store: StoreStatus
    network: str | None = None
    network6: str | None = None
    config_change: str = ""
    instance: InstanceView | None = optional()
    mesh: MeshCounters | None = optional()
    interface: InterfaceView | None = optional()
    lease: LeaseView | None = optional()
    backend: BackendSection | None = optional()
    peers: tuple[PeerRow, ...] = ()
    ignored: tuple[str, ...] = ()
    subnet_env: SubnetEnvState | None = optional()
    bridge_nf: BridgeNf | None = optional()
    iptables: TrafficView | None = optional()

    @property
    def store_kind(self) -> str:
        return self.store.kind

    def peer(self, subnet: str) -> PeerRow | None:
        return next((r for r in self.peers if r.subnet == subnet), None)

    def to_json(self) -> dict[str, Any]:
        doc = to_json(self)
        section = doc.pop("store")
        kind = section.pop("kind")
        return {**doc, "store": kind, kind: section}

    @classmethod
    def parse(cls, data: Any) -> StatusDoc:
        """A document read from outside, validated (SchemaError: what is wrong, where)."""
        if not isinstance(data, dict):
            raise SchemaError(f"document: expected an object, got {type(data).__name__}")
        kind = data.get("store", "etcd")
        if not isinstance(kind, str) or not isinstance(data.get(kind, {}), dict):
            raise SchemaError(f"store: {kind!r} names no section of the document")
        return from_json(cls, {**data, "store": {**data.get(kind, {}), "kind": kind}})
