"""Netlink I/O for the backends' kernel entries. Every function takes an ``IPRoute``
(kernel/iproute.py) first and runs on the netlink thread (see pyflannel.kernel.netlink); the
decisions live in plan.py, and each backend's own devices in its folder.

Ownership is per network (several daemons, one per ``--etcd-prefix``, may share a host): a
daemon touches only its own devices, the neighbour/FDB entries on its VXLAN device, and routes
in the main table that carry pyflannel's route protocol number ``RTPROT_PYFLANNEL`` *and* lie
inside one of its network's CIDRs (``Devices.networks``). Another network's routes carry the
same protocol number but other destinations, so they are never read as ours, never "repaired"
and never deleted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pyflannel.backend.plan import (
    Action,
    IPAddress,
    IPNetwork,
    KernelState,
    Op,
    Route,
    Table,
    Via,
)
from pyflannel.kernel import codec, requests
from pyflannel.kernel.codec import (
    AF_INET,
    AF_INET6,
    IFA_F_NODAD,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    RTPROT_PYFLANNEL,
)
from pyflannel.kernel.iproute import IPRoute, NetlinkError
from pyflannel.kernel.message import NEIGH, ROUTE, Message
from pyflannel.kernel.netlink import route_socket

log = logging.getLogger(__name__)

# A blackhole route's metric: the worst there is, so that the CNI bridge's route to the same
# subnet (metric 0) always wins, and a REPLACE of ours never matches anyone else's route.
BLACKHOLE_METRIC = 0xFFFFFFFF

# Errors that mean "already as wanted" for the operation that got them.
_ABSENT = {errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class Devices:
    """What one network owns in the kernel: the interface indexes of its devices (None: not
    on this node) and the CIDRs its routes lie in (its network, and the one its subnet file
    named before a config change). An overlay device holds neighbours and FDB entries and
    takes onlink routes (VXLAN); a tunnel device is point-to-point, routes go into it (the
    UDP path's TUN, WireGuard's). Each family may have its own."""

    overlay: int | None = None
    tunnel: int | None = None
    networks: tuple[IPNetwork, ...] = ()
    overlay6: int | None = None
    tunnel6: int | None = None
    site: int | None = None  # the site link: routes to peers of other sites (backend/sites/)

    def owns_route(self, dst: IPNetwork) -> bool:
        return any(
            dst.version == network.version and dst.subnet_of(network)  # type: ignore[arg-type]
            for network in self.networks
        )

    def overlay_for(self, address: IPAddress | IPNetwork) -> int | None:
        """The overlay device of an entry's family."""
        return self.overlay6 if address.version == 6 else self.overlay

    def tunnel_for(self, address: IPAddress | IPNetwork) -> int | None:
        """The tunnel device of an entry's family (one device may carry both)."""
        return self.tunnel6 if address.version == 6 and self.tunnel6 is not None else self.tunnel


def describe_error(e: Exception) -> str:
    """A netlink error as a sentence: the kernel's message and the errno name."""
    if isinstance(e, NetlinkError):
        name = errno.errorcode.get(e.code, str(e.code))
        message = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code)
        return f"{message} ({name})"
    return str(e)


def link_index(ipr: IPRoute, name: str) -> int | None:
    link = ipr.get_link(name)
    return link.index if link is not None else None


def delete_link(ipr: IPRoute, index: int) -> None:
    ipr.delete_link(index)


def configure_device(
    ipr: IPRoute, index: int, name: str, address: IPAddress, network: IPNetwork, mtu: int
) -> list[str]:
    """Make ``address`` (a host address: /32, or /128 on an IPv6 device) the device's only
    address inside ``network``, set the MTU, bring it up, and stop it from taking IPv6 router
    advertisements. Returns what it changed. An IPv6 address is added without duplicate
    address detection (nobody else can hold it: it is our lease's), so it works at once."""
    changed = []
    v6 = address.version == 6
    family, host_len = (AF_INET6, 128) if v6 else (AF_INET, 32)
    have = set()  # what stays, from the one read
    for msg in ipr.get_addr(index=index, family=family):
        ip = msg.get_attr("IFA_ADDRESS")
        if ip in network and (ip != address or msg["prefixlen"] != host_len):
            ipr.addr("del", index=index, address=str(ip), prefixlen=msg["prefixlen"])
            changed.append(f"removed address {ip}/{msg['prefixlen']}")
        else:
            have.add(ip)
    if address not in have:
        extra = {"flags": IFA_F_NODAD} if v6 else {}
        ipr.addr("replace", index=index, address=str(address), prefixlen=host_len, **extra)
        changed.append(f"address {address}/{host_len}")
    link = ipr.get_link(index=index)
    if link is None:
        raise NetlinkError(errno.ENODEV, f"device {name} (index {index}) is gone")
    if link.mtu != mtu:
        ipr.set_link(index, mtu=mtu)
        changed.append(f"MTU {mtu}")
    if not link.up:
        ipr.set_link(index, up=True)
        changed.append("up")
    accept_ra = Path(f"/proc/sys/net/ipv6/conf/{name}/accept_ra")
    try:
        if accept_ra.read_text().strip() != "0":
            accept_ra.write_text("0")
    except OSError:
        pass  # IPv6 disabled: nothing to turn off
    return changed


def loose_reverse_path(name: str) -> None:
    """Make the reverse-path filter loose on one of our devices if it is strict there (the
    effective value is the larger of ``all`` and the device's): a peer moved to UDP sends over
    VXLAN still, and vice versa, so a packet may arrive on the device its reply does not
    leave by. Loose mode still drops sources with no route at all."""
    conf = Path("/proc/sys/net/ipv4/conf")
    try:
        strict = max(
            int((conf / "all/rp_filter").read_text()), int((conf / name / "rp_filter").read_text())
        )
        if strict == 1:
            (conf / name / "rp_filter").write_text("2")
            log.info(
                "%s: reverse-path filter set to loose (2): replies may use the other encapsulation",
                name,
            )
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read or set the reverse-path filter: %s", name, e)


def foreign_addresses(ipr: IPRoute, name: str, network: IPv4Network) -> list[str]:
    """IPv4 addresses of device ``name`` outside ``network``: if there are any, the device
    belongs to another network's daemon on this host."""
    index = link_index(ipr, name)
    if index is None:
        return []
    addresses = (m.get_attr("IFA_ADDRESS") for m in ipr.get_addr(index=index, family=AF_INET))
    return [str(ip) for ip in addresses if ip not in network]


def _dump(kind: int, family: int) -> functools.partial[bytes]:
    return functools.partial(requests.dump, kind=kind, family=family)


def read_state(ipr: IPRoute, devices: Devices) -> KernelState:
    """What this network owns in the kernel now: permanent neighbours and permanent FDB
    entries on its overlay devices, and routes with our protocol number in the main table
    inside its CIDRs."""
    rs = route_socket()
    state = KernelState()
    overlays = {4: devices.overlay, 6: devices.overlay6}  # the overlay device per family
    wanted = [(f, index) for f, index in ((AF_INET, overlays[4]), (AF_INET6, overlays[6])) if index]
    for family, index in wanted:
        for _, _, payload in rs.dump(_dump(codec.RTM_GETNEIGH, family)):
            neigh = NEIGH.decode(payload)
            dst, lladdr = neigh.get_attr("NDA_DST"), neigh.get_attr("NDA_LLADDR")
            permanent = neigh["state"] & codec.NUD_PERMANENT
            if neigh["ifindex"] == index and permanent and dst is not None and lladdr:
                state.neighbours[dst] = lladdr
    if wanted:
        for _, _, payload in rs.dump(_dump(codec.RTM_GETNEIGH, codec.AF_BRIDGE)):
            fdb = NEIGH.decode(payload)
            dst, lladdr = fdb.get_attr("NDA_DST"), fdb.get_attr("NDA_LLADDR")
            permanent = fdb["state"] & codec.NUD_PERMANENT
            # on a device of the destination's own family (dual-stack: one device per family)
            if dst is not None and fdb["ifindex"] == overlays[dst.version] and permanent and lladdr:
                state.fdb[lladdr] = dst
    versions = {network.version for network in devices.networks}
    families = [af for af, v in ((AF_INET, 4), (AF_INET6, 6)) if v in versions]
    for family in families:
        for _, _, payload in rs.dump(_dump(codec.RTM_GETROUTE, family)):
            route = ROUTE.decode(payload)
            if route["proto"] != RTPROT_PYFLANNEL or route["family"] != family:
                continue
            table = route.get_attr("RTA_TABLE") or route["table"]
            dst = route.get_attr("RTA_DST")
            network = IPv6Network if family == AF_INET6 else IPv4Network
            subnet: IPNetwork = network((int(dst) if dst is not None else 0, route["dst_len"]))
            if table == RT_TABLE_MAIN and devices.owns_route(subnet):
                state.routes[subnet] = (
                    Route(None, Via.BLACKHOLE)
                    if route["type"] == codec.RTN_BLACKHOLE
                    else _route_of(route, devices)
                )
    return state


def _route_of(route: Message, devices: Devices) -> Route:
    gateway = route.get_attr("RTA_GATEWAY")
    oif, flags = route.get_attr("RTA_OIF"), route["flags"]
    metrics = route.get_attr("RTA_METRICS")
    mtu = (metrics.get_attr("RTAX_MTU") or 0) if metrics is not None else 0
    overlay = (devices.overlay, devices.overlay6)
    if oif is not None and oif in (devices.tunnel, devices.tunnel6):
        return Route(gateway, Via.TUNNEL, mtu)
    if oif is not None and oif == devices.site:
        return Route(gateway, Via.SITE, mtu)
    if oif is not None and oif in overlay and flags & RTNH_F_ONLINK:
        return Route(gateway, Via.ONLINK, mtu)
    via = Via.UNDERLAY if oif not in (*overlay, devices.tunnel) else Via.OTHER
    return Route(gateway, via, mtu)


def _encode(seq: int, devices: Devices, op: Op) -> bytes:
    if op.table in (Table.NEIGH, Table.FDB):
        overlay = devices.overlay_for(op.key if op.table == Table.NEIGH else op.value)
        if overlay is None:
            raise ValueError(f"{op.table} entry {op.key} without an overlay device")
        if op.table == Table.NEIGH:
            if op.action == Action.REPLACE:
                return requests.neighbour_replace(seq, overlay, op.key, op.value)
            return requests.neighbour_delete(seq, overlay, op.key)
        if op.action == Action.REPLACE:
            return requests.fdb_replace(seq, overlay, op.key, op.value)
        return requests.fdb_delete(seq, overlay, op.key, op.value)
    if op.action == Action.DELETE:
        return requests.route_delete(seq, op.key, RTPROT_PYFLANNEL)
    route: Route = op.value
    if route.via == Via.BLACKHOLE:
        return requests.route_replace(
            seq,
            op.key,
            None,
            None,
            False,
            RTPROT_PYFLANNEL,
            kind=codec.RTN_BLACKHOLE,
            priority=BLACKHOLE_METRIC,
        )
    oif = {
        Via.ONLINK: devices.overlay_for(op.key),
        Via.TUNNEL: devices.tunnel_for(op.key),
        Via.SITE: devices.site,
    }.get(route.via)
    return requests.route_replace(
        seq, op.key, route.gateway, oif, route.via == Via.ONLINK, RTPROT_PYFLANNEL, mtu=route.mtu
    )


def apply_all(ipr: IPRoute, devices: Devices, ops: list[Op]) -> list[tuple[Op, str]]:
    """All operations, many per system call; the failures, with their errors. An entry that
    is already absent counts as deleted."""
    rs = route_socket()
    requests = [(seq, _encode(seq, devices, op)) for op in ops for seq in (rs.next_seq(),)]
    results = rs.execute(requests)
    failed = []
    for op, (seq, _) in zip(ops, requests, strict=True):
        code = results.get(seq, 0)
        if code and not (op.action == Action.DELETE and code in _ABSENT):
            failed.append((op, f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"))
    return failed


def directly_reachable(ipr: IPRoute, ip: IPAddress, underlay_index: int) -> bool:
    """DirectRouting: is ``ip`` on a link of ours (no gateway), via the underlay?"""
    try:
        routes = ipr.route("get", dst=str(ip), family=AF_INET6 if ip.version == 6 else AF_INET)
    except NetlinkError:
        return False
    return (
        len(routes) == 1
        and routes[0].get_attr("RTA_GATEWAY") is None
        and routes[0].get_attr("RTA_OIF") == underlay_index
    )
