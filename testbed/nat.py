"""Nodes behind NAT on one bed: a natted node's host sits on a private link of its own
(192.168.<i>.2/24) behind a router namespace, whose outside leg is a port of the switch
(198.51.100.<100 + i>) and which masquerades everything leaving it (iptables MASQUERADE), as
a home or office router does. The node reaches the switch (etcd, the other nodes) through it;
nothing on the switch reaches the node unless the node spoke first (conntrack), and no port
is forwarded. Its eth0 address, the one its lease publishes, is reached by nobody."""

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
    """``natted``: the (1-based) nodes each behind a NAT router of its own."""

    def __init__(self, hosts: int, natted: set[int], **kwargs):
        self.natted = natted
        super().__init__(hosts=hosts, **kwargs)

    def attach_host(self, node: Node, mac: str | None = None) -> None:
        if node.index not in self.natted:
            super().attach_host(node, mac)
            return
        i, router = node.index, router_ns(self, node.index)
        self._attach(router, f"vr{i}", outside_ip(i))
        self._create(node.ns)
        netns.add_veth(router, "lan0", node.ns, "eth0", self.mtu)
        node.underlay_ip = IPv4Address(f"192.168.{i}.2")
        netns.ip(router, "addr", "add", f"192.168.{i}.1/24", "dev", "lan0")
        netns.ip(router, "link", "set", "lan0", "up")
        if mac:
            netns.ip(node.ns, "link", "set", "eth0", "address", mac)
        netns.ip(node.ns, "addr", "add", f"{node.underlay_ip}/24", "dev", "eth0")
        netns.ip(node.ns, "link", "set", "eth0", "up")
        netns.ip(node.ns, "route", "add", "default", "via", f"192.168.{i}.1")
        netns.sysctl(router, "net.ipv4.ip_forward", "1")
        masquerade = [
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ]
        netns.run(masquerade, ns=router)
