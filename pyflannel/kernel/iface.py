"""Choosing the external interface and the public IP (upstream pkg/ipmatch, interop §5).

``select_ext_iface`` is pure; ``read_interfaces`` and ``route_source`` read the kernel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

from pyflannel.errors import InterfaceError
from pyflannel.kernel.codec import IFA_F_DEPRECATED, IFA_F_TEMPORARY, RT_SCOPE_UNIVERSE


@dataclass(frozen=True)
class Address:
    ip: IPv4Address | IPv6Address
    prefixlen: int
    scope: int = RT_SCOPE_UNIVERSE
    flags: int = 0

    @property
    def usable(self) -> bool:
        return not (self.flags & IFA_F_DEPRECATED) and not self.ip.is_loopback


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mtu: int
    addresses: list[Address] = field(default_factory=list)

    def best_address(self) -> IPv4Address | None:
        """Upstream's order: global before link-local, non-temporary first; deprecated never."""
        usable = [a for a in self.addresses if a.usable and isinstance(a.ip, IPv4Address)]
        usable.sort(
            key=lambda a: (
                a.scope != RT_SCOPE_UNIVERSE or a.ip.is_link_local,
                bool(a.flags & IFA_F_TEMPORARY),
            )
        )
        ip = usable[0].ip if usable else None
        return ip if isinstance(ip, IPv4Address) else None

    def best_address6(self) -> IPv6Address | None:
        """The first global unicast IPv6 address (upstream's GetInterfaceIP6Addr), stable
        ones before temporary ones; link-local and deprecated addresses never."""
        usable = [
            a.ip
            for a in sorted(self.addresses, key=lambda a: bool(a.flags & IFA_F_TEMPORARY))
            if _global6(a) and isinstance(a.ip, IPv6Address)
        ]
        return usable[0] if usable else None


@dataclass(frozen=True)
class ExtIface:
    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address  # the address on the interface (VXLAN/UDP bind here)
    public_ip: IPv4Address  # the address advertised in the lease
    iface_addr6: IPv6Address | None = None  # dual-stack: the interface's IPv6 address
    public_ipv6: IPv6Address | None = None  # and the one advertised (PublicIPv6)
    # dual-stack: the interface holding iface_addr6, if not this one (--iface-regex or
    # --iface-can-reach chose an IPv6 address elsewhere)
    name6: str = ""
    index6: int = 0
    mtu6: int = 0

    @property
    def v6_index(self) -> int:
        return self.index6 or self.index

    @property
    def v6_mtu(self) -> int:
        return self.mtu6 or self.mtu

    def describe(self) -> str:
        public = "" if self.public_ip == self.iface_addr else f", public IP {self.public_ip}"
        if self.iface_addr6 is not None:
            public += f", {self.iface_addr6}" + (f" on {self.name6}" if self.name6 else "")
            if self.public_ipv6 != self.iface_addr6:
                public += f", public IPv6 {self.public_ipv6}"
        return f"{self.name} (index {self.index}, {self.iface_addr}, MTU {self.mtu}{public})"


def with_ipv6(
    ext: ExtIface,
    interfaces: list[Interface],
    public_ipv6: IPv6Address | None = None,
    iface_regex: Sequence[str] = (),
    can_reach6: tuple[int, IPv6Address] | None = None,
) -> ExtIface:
    """The IPv6 side, for a dual-stack network: the IPv6 address the VXLAN device binds to
    and the one to advertise (``--public-ipv6`` if given, as upstream: it need not be local).

    Upstream takes the IPv4 interface's first global IPv6 address, whatever the flags (its
    #2081). Here the flags choose for IPv6 too: an IPv6 target of ``--iface-can-reach`` (the
    source address and interface of the route to it), else the first ``--iface-regex``
    pattern that matches a usable global IPv6 address; else upstream's choice."""
    chosen = _chosen6(interfaces, iface_regex, can_reach6)
    if chosen is not None:
        interface6, address6 = chosen
        if interface6.index == ext.index:
            return replace(ext, iface_addr6=address6, public_ipv6=public_ipv6 or address6)
        return replace(
            ext,
            iface_addr6=address6,
            public_ipv6=public_ipv6 or address6,
            name6=interface6.name,
            index6=interface6.index,
            mtu6=interface6.mtu,
        )
    interface = next((i for i in interfaces if i.index == ext.index), None)
    addr6 = interface.best_address6() if interface is not None else None
    if addr6 is None:
        have = ", ".join(str(a.ip) for a in interface.addresses) if interface else "none"
        raise InterfaceError(
            f"EnableIPv6 is set but interface {ext.name} has no global IPv6 address "
            f"(its addresses: {have or 'none'}); give it one, choose another with --iface, "
            "or turn EnableIPv6 off in the network config"
        )
    return replace(ext, iface_addr6=addr6, public_ipv6=public_ipv6 or addr6)


def _global6(a: Address) -> bool:
    return (
        isinstance(a.ip, IPv6Address)
        and a.usable
        and not (a.ip.is_link_local or a.ip.is_multicast or a.ip.is_unspecified)
    )


def _chosen6(
    interfaces: list[Interface],
    iface_regex: Sequence[str],
    can_reach6: tuple[int, IPv6Address] | None,
) -> tuple[Interface, IPv6Address] | None:
    if can_reach6 is not None:
        index, src = can_reach6
        found = next((i for i in interfaces if i.index == index), None)
        if found is None:
            raise InterfaceError(
                f"--iface-can-reach: the route leaves by unknown interface {index}"
            )
        return found, src
    for pattern in iface_regex:
        regex = re.compile(pattern)
        for interface in interfaces:
            for a in interface.addresses:
                if _global6(a) and regex.search(str(a.ip)):
                    assert isinstance(a.ip, IPv6Address)
                    return interface, a.ip
    return None


def ipv4_patterns(interfaces: list[Interface], iface_regex: Sequence[str]) -> tuple[str, ...]:
    """The patterns the IPv4 choice uses: all of them, unless none matches an IPv4 address
    or an interface name but some match an IPv6 address (patterns for IPv6 only: the IPv4
    choice is then the default one)."""

    def matches(pattern: str, v6: bool) -> bool:
        try:
            regex = re.compile(pattern)
        except re.error:
            return not v6  # select_ext_iface reports it
        if v6:
            return any(
                _global6(a) and regex.search(str(a.ip)) for i in interfaces for a in i.addresses
            )
        return any(
            regex.search(i.name)
            or any(a.ip.version == 4 and regex.search(str(a.ip)) for a in i.addresses)
            for i in interfaces
        )

    if any(matches(p, v6=False) for p in iface_regex):
        return tuple(iface_regex)
    if any(matches(p, v6=True) for p in iface_regex):
        return ()
    return tuple(iface_regex)


def select_ext_iface(
    interfaces: list[Interface],
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    public_ip: IPv4Address | None = None,
    default_route_index: int | None = None,
    can_reach: tuple[int, IPv4Address] | None = None,
) -> ExtIface:
    """Pick the interface the way upstream does, with errors that say what was tried."""
    chosen: tuple[Interface, IPv4Address] | None = None
    by_name = {i.name: i for i in interfaces}
    for wanted in iface:
        ip = _as_ip(wanted)
        if ip is not None:
            chosen = next(
                ((i, ip) for i in interfaces if any(a.ip == ip for a in i.addresses)), None
            )
        elif wanted in by_name:
            addr = by_name[wanted].best_address()
            chosen = (by_name[wanted], addr) if addr else None
        if chosen:
            break
    if chosen is None and not iface:
        for pattern in iface_regex:
            try:
                regex = re.compile(pattern)
            except re.error as e:
                raise InterfaceError(
                    f"--iface-regex {pattern!r} is not a valid regex: {e}"
                ) from None
            chosen = next(
                (
                    (i, a.ip)
                    for i in interfaces
                    for a in i.addresses
                    if a.usable and isinstance(a.ip, IPv4Address) and regex.search(str(a.ip))
                ),
                None,
            ) or next(
                (
                    (i, best)
                    for i in interfaces
                    if regex.search(i.name)
                    for best in (i.best_address(),)
                    if best is not None
                ),
                None,
            )
            if chosen:
                break
    if chosen is None and not iface and not iface_regex:
        if can_reach is not None:
            index, src = can_reach
            chosen = next(((i, src) for i in interfaces if i.index == index), None)
        elif public_ip is not None:
            chosen = next(
                ((i, public_ip) for i in interfaces if any(a.ip == public_ip for a in i.addresses)),
                None,
            )
        elif default_route_index is not None:
            match = next((i for i in interfaces if i.index == default_route_index), None)
            best = match.best_address() if match is not None else None
            if match is not None and best is not None:
                chosen = (match, best)
    if chosen is None:
        raise InterfaceError(
            _not_found(interfaces, iface, iface_regex, public_ip, default_route_index)
        )
    interface, addr = chosen
    if interface.mtu <= 0:
        raise InterfaceError(f"interface {interface.name} reports MTU {interface.mtu}")
    return ExtIface(interface.name, interface.index, interface.mtu, addr, public_ip or addr)


def _as_ip(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _not_found(interfaces, iface, iface_regex, public_ip, default_route_index) -> str:
    names = ", ".join(
        f"{i.name}[{' '.join(str(a.ip) for a in i.addresses if a.ip.version == 4) or 'no IPv4'}]"
        for i in interfaces
    )
    if iface:
        what = f"no interface matches --iface {' '.join(iface)}"
    elif iface_regex:
        what = f"no interface or address matches --iface-regex {' '.join(iface_regex)}"
    elif public_ip is not None:
        what = f"--public-ip {public_ip} is not an address of any interface (use --iface too)"
    elif default_route_index is None:
        what = "there is no IPv4 default route; choose the interface with --iface"
    else:
        what = "the default-route interface has no usable IPv4 address"
    return f"{what}. Interfaces: {names or 'none'}"


# -- kernel side -------------------------------------------------------------------------


def read_interfaces(ipr) -> tuple[list[Interface], int | None]:
    """Interfaces with their IPv4 and IPv6 addresses, and the index of the default-route
    interface."""
    addresses: dict[int, list[Address]] = {}
    for family, kind in ((2, IPv4Address), (10, IPv6Address)):
        for msg in ipr.get_addr(family=family):
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            ip = kind(msg.get_attr("IFA_ADDRESS"))
            addresses.setdefault(msg["index"], []).append(
                Address(ip, msg["prefixlen"], msg["scope"], flags)
            )
    interfaces = [
        Interface(
            link.get_attr("IFLA_IFNAME"),
            link["index"],
            link.get_attr("IFLA_MTU") or 0,
            addresses.get(link["index"], []),
        )
        for link in ipr.get_links()
    ]
    return interfaces, default_route_interface()


def default_route_interface() -> int | None:
    """The interface of the IPv4 default route in the main table (upstream's choice). Read with
    the fast dump: the table also holds one route per peer, thousands of them."""
    import functools

    from pyflannel.kernel import codec, requests
    from pyflannel.kernel.message import ROUTE
    from pyflannel.kernel.netlink import route_socket

    default = None
    dump = functools.partial(requests.dump, kind=codec.RTM_GETROUTE, family=codec.AF_INET)
    for _, _, payload in route_socket().dump(dump):  # read it all
        route = ROUTE.decode(payload)
        table = route.get_attr("RTA_TABLE") or route["table"]
        if default is None and route["dst_len"] == 0 and table == codec.RT_TABLE_MAIN:
            default = route.get_attr("RTA_OIF")
    return default


@dataclass(frozen=True)
class IfaceChoice:
    """How the operator asked for the external interface (--iface, --iface-regex,
    --iface-can-reach, --public-ip, --public-ipv6)."""

    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    can_reach: IPv4Address | None = None
    public_ip: IPv4Address | None = None
    public_ipv6: IPv6Address | None = None
    can_reach6: IPv6Address | None = None  # an IPv6 target of --iface-can-reach


def chosen_interface(ipr, choice: IfaceChoice, ipv6: bool = False) -> ExtIface:
    """``external_interface`` as ``choice`` asks for it."""
    return external_interface(
        ipr,
        iface=choice.iface,
        iface_regex=choice.iface_regex,
        public_ip=choice.public_ip,
        can_reach=choice.can_reach,
        ipv6=ipv6,
        public_ipv6=choice.public_ipv6,
        can_reach6=choice.can_reach6,
    )


def external_interface(
    ipr,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    public_ip: IPv4Address | None = None,
    can_reach: IPv4Address | None = None,
    ipv6: bool = False,
    public_ipv6: IPv6Address | None = None,
    can_reach6: IPv6Address | None = None,
) -> ExtIface:
    """Read the interfaces (and routes) from the kernel and choose as upstream does; with
    ``ipv6`` (a dual-stack network) also the IPv6 address (``with_ipv6``)."""
    ext, interfaces = choose_external(
        ipr, iface=iface, iface_regex=iface_regex, public_ip=public_ip, can_reach=can_reach
    )
    if not ipv6:
        return ext
    reach6 = route_source6(ipr, can_reach6) if can_reach6 is not None else None
    return with_ipv6(ext, interfaces, public_ipv6, iface_regex, reach6)


def choose_external(
    ipr,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    public_ip: IPv4Address | None = None,
    can_reach: IPv4Address | None = None,
) -> tuple[ExtIface, list[Interface]]:
    """The IPv4 choice, and the interfaces it was made from (one read of the kernel)."""
    interfaces, default = read_interfaces(ipr)
    ext = select_ext_iface(
        interfaces,
        iface=iface,
        iface_regex=ipv4_patterns(interfaces, iface_regex),
        public_ip=public_ip,
        default_route_index=default,
        can_reach=route_source(ipr, can_reach) if can_reach is not None else None,
    )
    return ext, interfaces


def route_source(ipr, dst: IPv4Address) -> tuple[int, IPv4Address]:
    """``ip route get dst``: the outgoing interface index and source address."""
    route = ipr.route("get", dst=str(dst))[0]
    return route.get_attr("RTA_OIF"), IPv4Address(route.get_attr("RTA_PREFSRC"))


def route_source6(ipr, dst: IPv6Address) -> tuple[int, IPv6Address]:
    """``ip -6 route get dst``: the outgoing interface index and source address."""
    routes = ipr.route("get", dst=str(dst), family=10)
    src = routes[0].get_attr("RTA_PREFSRC") if routes else None
    if not routes or src is None:
        raise InterfaceError(f"--iface-can-reach {dst}: no IPv6 route (or source address) to it")
    return routes[0].get_attr("RTA_OIF"), IPv6Address(src)


def hardware_address(ipr, index: int) -> str:
    """The interface's MAC address ("" if it has none), part of this node's fingerprint."""
    links = ipr.get_links(index)
    return (links[0].get_attr("IFLA_ADDRESS") or "") if links else ""
