"""A trace as pure data: the nodes at both ends, one step per place the path crosses, and the
judgement of each from facts already gathered (gather.py does the I/O). Rendering for people
and for scripts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address

from pyflannel.backend.plan import PeerDataError, backend_data, parse_mac
from pyflannel.ops.trace.rules import Verdict
from pyflannel.subnet.lease import Lease


@dataclass
class Step:
    place: str  # store, route, neighbour, fdb, udp path, rules, underlay, encapsulation, ...
    ok: bool | None  # None: shown, not judged (e.g. a path another node reports)
    detail: str
    fix: str = ""


@dataclass
class Node:
    """One end's node, as its lease says."""

    subnet: str
    public_ip: str
    backend: str
    vtep_mac: str = ""
    udp_port: int = 0
    this_node: bool = False

    @property
    def overlay_address(self) -> IPv4Address:
        """Its flannel device's address (its subnet's network address)."""
        return IPv4Address(self.subnet.split("/")[0])

    def describe(self) -> str:
        extra = [f"VTEP MAC {self.vtep_mac}"] if self.vtep_mac else []
        extra += [f"UDP port {self.udp_port}"] if self.udp_port else []
        where = " (this node)" if self.this_node else ""
        return f"{self.subnet} held by {self.public_ip}{where}, {self.backend or 'udp'}" + (
            f" ({', '.join(extra)})" if extra else ""
        )


@dataclass
class Trace:
    src: str
    dst: str
    src_node: Node | None = None
    dst_node: Node | None = None
    encapsulation: str = ""
    pod_mtu: int = 0
    steps: list[Step] = field(default_factory=list)

    def add(self, place: str, ok: bool | None, detail: str, fix: str = "") -> Step:
        step = Step(place, ok, detail, fix)
        self.steps.append(step)
        return step

    @property
    def failure(self) -> Step | None:
        """The first place the path fails, if it does."""
        return next((s for s in self.steps if s.ok is False), None)

    @property
    def verdict(self) -> str:
        failed = self.failure
        if failed is not None:
            return f"BROKEN at {failed.place}: {failed.detail}"
        return "OK: every place checked passes"

    def document(self) -> dict:
        doc = asdict(self)
        failed = self.failure
        doc["verdict"] = "broken" if failed else "ok"
        doc["first_failure"] = asdict(failed) if failed else None
        return doc


def node_of(lease: Lease, this_subnet: str | None) -> Node:
    """A lease as one end of a path (bad backend data shows as missing, not as an error)."""
    data: dict = {}
    try:
        data = backend_data(lease)
    except PeerDataError:
        pass
    try:
        mac = parse_mac(data["vtepmac"]) if "vtepmac" in data else ""
    except PeerDataError:
        mac = ""
    port = data.get("udpport") or (
        data.get("port") if lease.attrs.backend_type in ("", "udp") else 0
    )
    return Node(
        subnet=str(lease.subnet),
        public_ip=str(lease.attrs.public_ip),
        backend=lease.attrs.backend_type,
        vtep_mac=mac,
        udp_port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
        this_node=str(lease.subnet) == this_subnet,
    )


def locate(address: IPv4Address, leases: list[Lease]) -> Lease | None:
    """The lease whose subnet holds ``address``, or whose PublicIP it is."""
    for lease in leases:
        if address in lease.subnet:
            return lease
    return next((le for le in leases if le.attrs.public_ip == address), None)


# -- judging what was found ------------------------------------------------------------------


def judge_route(trace: Trace, dst: Node, route: dict | None, healed: bool) -> str | None:
    """This node's route to the destination's subnet; the device it leaves by, if right."""
    overlay = dst.overlay_address
    if route is None:
        trace.add(
            "route",
            False,
            f"no route to {trace.dst}: the kernel has nothing for {dst.subnet}",
            "is the daemon running? (`pyflannel status`); it restores its routes at once",
        )
        return None
    dev, gateway = route.get("dev", ""), route.get("gateway")
    shown = f"{trace.dst} via {gateway or '-'} dev {dev}"
    if dev == "flannel-site":
        trace.add("route", True, f"{shown} (the site link: encrypted, to a node of another site)")
        return dev
    if dst.backend == "vxlan" and not healed:
        if dev.startswith("flannel.") and gateway == str(overlay):
            trace.add("route", True, f"{shown} onlink (VXLAN, as the lease says)")
            return dev
        fix = "the daemon restores it within its reconcile interval; `pyflannel status` shows it"
        trace.add("route", False, f"{shown}: expected via {overlay} dev flannel.<VNI> onlink", fix)
        return None
    if dev == "flannel0":
        why = " (the path healer moved it: VXLAN to it failed)" if healed else ""
        trace.add("route", True, f"{shown} (UDP encapsulation{why})")
        return dev
    if dst.backend == "host-gw" and gateway == dst.public_ip:
        trace.add("route", True, f"{shown} (host-gw: straight to the peer)")
        return dev
    trace.add("route", None, shown)
    return dev


def judge_neighbour(trace: Trace, dst: Node, dev: str, neighbours: dict[str, str]) -> bool:
    overlay = str(dst.overlay_address)
    have = neighbours.get(overlay)
    if have is None:
        trace.add(
            "neighbour",
            False,
            f"no neighbour entry for {overlay} on {dev}: the kernel cannot resolve the VTEP",
            "the daemon restores it (reconcile); a manual fix: ip neigh replace "
            f"{overlay} lladdr {dst.vtep_mac} dev {dev} nud permanent",
        )
        return False
    if have != dst.vtep_mac:
        trace.add(
            "neighbour",
            False,
            f"{overlay} on {dev} is {have}, the lease says {dst.vtep_mac}",
            "the daemon repairs it on its next reconcile",
        )
        return False
    trace.add("neighbour", True, f"{overlay} lladdr {have} on {dev}")
    return True


def judge_fdb(trace: Trace, dst: Node, dev: str, fdb: dict[str, str]) -> bool:
    have = fdb.get(dst.vtep_mac)
    if have is None:
        trace.add(
            "fdb",
            False,
            f"no FDB entry for {dst.vtep_mac} on {dev}: VXLAN frames have no destination",
            f"bridge fdb replace {dst.vtep_mac} dev {dev} dst {dst.public_ip} (or let the "
            "daemon reconcile)",
        )
        return False
    if have != dst.public_ip:
        trace.add(
            "fdb",
            False,
            f"{dst.vtep_mac} on {dev} is sent to {have}, but the node is at {dst.public_ip}",
            "the daemon repairs it on its next reconcile",
        )
        return False
    trace.add("fdb", True, f"{dst.vtep_mac} dst {have} on {dev}")
    return True


def judge_rules(trace: Trace, verdict: Verdict | None, forwarded: bool, masq: str) -> bool:
    if not forwarded:
        trace.add("rules", True, f"not forwarded here (sent by this node); {masq}")
        return True
    if verdict is None:
        trace.add("rules", None, f"iptables not readable; {masq}")
        return True
    maybe = f"; may drop some traffic: {'; '.join(verdict.may_drop)}" if verdict.may_drop else ""
    if not verdict.accepted:
        trace.add(
            "rules",
            False,
            f"the filter table's FORWARD drops it: {verdict.rule}",
            "remove that rule, or accept the network's traffic before it",
        )
        return False
    trace.add("rules", True, f"FORWARD accepts it ({verdict.rule}){maybe}; {masq}")
    return True


def render(t: Trace) -> str:
    lines = [f"pyflannel trace {t.src} -> {t.dst}"]
    if t.src_node is not None:
        lines.append(f"  from  {t.src_node.describe()}")
    if t.dst_node is not None:
        lines.append(f"  to    {t.dst_node.describe()}")
    if t.encapsulation:
        lines.append(f"  encapsulation {t.encapsulation}, pod MTU {t.pod_mtu or '?'}")
    lines.append("")
    for step in t.steps:
        mark = {True: "ok", False: "FAILED", None: "-"}[step.ok]
        lines.append(f"  {mark:<7} {step.place:<14} {step.detail}")
        if step.fix and step.ok is False:
            lines.append(f"  {'':<7} {'':<14} fix: {step.fix}")
    lines += ["", f"verdict: {t.verdict}"]
    return "\n".join(lines) + "\n"
