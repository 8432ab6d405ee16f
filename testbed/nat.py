"""Nodes behind NAT on one bed: a natted node's host sits on a private link of its own
(192.168.<i>.2/24) behind a router namespace, whose outside leg is a port of the switch
(198.51.100.<100 + i>) and which masquerades everything leaving it (iptables MASQUERADE), as
a home or office router does, with a home router's firewall (nothing unsolicited reaches the
router itself). The node reaches the switch (etcd, the other nodes) through it; nothing on the
switch reaches the node unless the node spoke first (conntrack), and no port is forwarded. Its eth0 address, the one its lease publishes, is reached by nobody."""

from __future__ import annotations

from ipaddress import IPv4Address

from testbed import netns
from testbed.bed import UNDERLAY, Node, TestBed


def router_ns(bed: TestBed, index: int) -> str:
    return f"{bed.prefix}r{index}"


def outside_ip(index: int) -> IPv4Address:
    """The router's address on the switch: what the natted node's packets come from."""
    return IPv4Address(f"{UNDERLAY}.{100 + index}")


class NatBed(TestBed):
    """``natted``: the (1-based) nodes each behind a NAT router of its own; those also in
    ``symmetric`` behind a router that maps every new flow to a random port (``MASQUERADE
    --random``, as carrier-grade and some office NATs do), so that what one peer sees of the
    node is no use to another: no direct path to another natted node opens through it."""

    def __init__(
        self,
        hosts: int,
        natted: set[int],
        symmetric: frozenset[int] = frozenset(),
        behind: dict[int, int] | None = None,
        **kwargs,
    ):
        """``behind``: natted nodes that share another natted node's router (an office of
        several nodes: node -> the node whose router it is behind)."""
        self.natted = natted
        self.symmetric = symmetric
        self.behind = behind or {}
        self.outside: dict[int, IPv4Address] = {}  # routers renumbered: their address now
        super().__init__(hosts=hosts, **kwargs)

    def open_nat(self, index: int) -> None:
        """Router ``index`` keeps ports from now on (plain MASQUERADE) and forgets its flows
        (conntrack -F), as after a router's reconfiguration and reboot."""
        router = router_ns(self, index)
        self.symmetric = self.symmetric - {index}
        netns.run(
            ["iptables", "-t", "nat", "-R", "POSTROUTING", "1", *self._masquerade(index)], ns=router
        )
        netns.run(["conntrack", "-F"], ns=router)

    def renumber(self, index: int, address: IPv4Address) -> None:
        """Router ``index``'s outside address becomes ``address`` (a provider renumbering
        the office line) and it forgets its flows, as after a reconnect."""
        router = router_ns(self, index)
        old = self.outside.get(index, outside_ip(index))
        netns.ip(router, "addr", "del", f"{old}/24", "dev", "eth0")
        netns.ip(router, "addr", "add", f"{address}/24", "dev", "eth0")
        self.outside[index] = address
        netns.run(["conntrack", "-F"], ns=router)

    def _masquerade(self, index: int) -> list[str]:
        random = ["--random"] if index in self.symmetric else []
        return ["-o", "eth0", "-j", "MASQUERADE", *random]

    def attach_host(self, node: Node, mac: str | None = None) -> None:
        if node.index not in self.natted:
            super().attach_host(node, mac)
            return
        i = self.behind.get(node.index, node.index)  # the router's number
        router = router_ns(self, i)
        first = router not in self._namespaces
        if first:
            self._attach(router, f"vr{i}", outside_ip(i))
            netns.ip(router, "link", "add", "lan0", "type", "bridge")
            netns.ip(router, "addr", "add", f"192.168.{i}.1/24", "dev", "lan0")
            netns.ip(router, "link", "set", "lan0", "up")
        self._create(node.ns)
        netns.add_veth(router, f"n{node.index}", node.ns, "eth0", self.mtu)
        netns.ip(router, "link", "set", f"n{node.index}", "master", "lan0", "up")
        host = 2 if node.index == i else 10 + node.index
        node.underlay_ip = IPv4Address(f"192.168.{i}.{host}")
        if mac:
            netns.ip(node.ns, "link", "set", "eth0", "address", mac)
        netns.ip(node.ns, "addr", "add", f"{node.underlay_ip}/24", "dev", "eth0")
        netns.ip(node.ns, "link", "set", "eth0", "up")
        netns.ip(node.ns, "route", "add", "default", "via", f"192.168.{i}.1")
        if not first:
            return
        netns.sysctl(router, "net.ipv4.ip_forward", "1")
        netns.run(["iptables", "-t", "nat", "-A", "POSTROUTING", *self._masquerade(i)], ns=router)
        # Like a home router's firewall: nothing unsolicited reaches the router itself. (An
        # unsolicited datagram it accepted would leave a conntrack entry that makes its NAT
        # pick another port for the node's own packets to that sender, as no real router's
        # firewall lets happen.)
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
        for rule in (
            ["-A", "INPUT", "-i", "eth0", *established, "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", "eth0", "-j", "DROP"],
        ):
            netns.run(["iptables", *rule], ns=router)


class SitesBed(NatBed):
    """The article's cluster, small: the nodes in ``sites`` (name -> 1-based nodes) that are not
    ``natted`` have their public address on the switch and, per site, a private LAN between
    them (``<prefix>s<site>`` holds its bridge; node i is 10.0.<k>.<i>/24 on its ``eth1``, k the
    site's number from 0): their daemons run with ``--iface=eth1 --public-ip=<public>``. Natted
    nodes sit behind their own NAT routers (NatBed) and know no outside address of their own.
    ``site_args(node)`` gives a daemon's --site flags."""

    def __init__(self, hosts: int, sites: dict[str, set[int]], natted: set[int], **kwargs):
        self.sites = sites
        super().__init__(hosts, natted, **kwargs)

    def site_of(self, node: Node) -> str:
        return next(name for name, members in self.sites.items() if node.index in members)

    def lan_ip(self, node: Node) -> IPv4Address:
        k = list(self.sites).index(self.site_of(node))
        return IPv4Address(f"10.0.{k}.{node.index}")

    def attach_host(self, node: Node, mac: str | None = None) -> None:
        super().attach_host(node, mac)
        if node.index in self.natted:
            return
        site = self.site_of(node)
        lan = f"{self.prefix}s{list(self.sites).index(site)}"
        if lan not in self._namespaces:
            self._create(lan)
            netns.ip(lan, "link", "add", "br1", "mtu", str(self.mtu), "type", "bridge")
            netns.ip(lan, "link", "set", "br1", "up")
        netns.add_veth(lan, f"s{node.index}", node.ns, "eth1", self.mtu)
        netns.ip(lan, "link", "set", f"s{node.index}", "master", "br1", "up")
        netns.ip(node.ns, "addr", "add", f"{self.lan_ip(node)}/24", "dev", "eth1")
        netns.ip(node.ns, "link", "set", "eth1", "up")
        node.iface = "eth1"

    def site_args(self, node: Node) -> tuple[str, ...]:
        args: tuple[str, ...] = (f"--site={self.site_of(node)}",)
        if node.index not in self.natted:
            args += (f"--public-ip={node.underlay_ip}",)
        return args
