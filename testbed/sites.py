"""Two "sites" on one bed: etcd members and nodes split in two, every TCP connection from one
site to the other's etcd ports delayed (testbed.delay: the kernel here has no netem). Raft
between members across sites and nodes' etcd calls across sites see the round trip of a
wide-area link; everything within a site, and the overlay's own traffic, stays as it is."""

from __future__ import annotations

from pathlib import Path

from testbed.bed import TestBed
from testbed.delay import DelayedPaths, set_delay

RELAY_PORT = 15380
ETCD_PORTS = (2379, 2380)


class TwoSiteBed(TestBed):
    """``far_members`` (1-based) and ``far_nodes`` (1-based) are site B, the rest site A;
    connections across are delayed ``one_way_ms`` each way (round trip: twice that)."""

    def __init__(
        self,
        hosts: int,
        etcd_members: int,
        far_members: set[int],
        far_nodes: set[int],
        one_way_ms: float,
    ):
        super().__init__(hosts=hosts, etcd_members=etcd_members)
        self.far_members, self.far_nodes = far_members, far_nodes
        self.delay_file = Path(self.workdir) / "delay_ms"
        set_delay(self.delay_file, one_way_ms)
        self.relays: list[DelayedPaths] = []

    def site_of_member(self, i: int) -> str:
        return "B" if i in self.far_members else "A"

    def site_of_node(self, i: int) -> str:
        return "B" if i in self.far_nodes else "A"

    def before_etcd(self) -> None:
        members = list(enumerate(self.etcd.members, 1))  # type: ignore[union-attr]
        sides = [(m.netns, self.site_of_member(i)) for i, m in members]
        sides += [(n.ns, self.site_of_node(n.index)) for n in self.nodes]
        for ns, site in sides:
            across = [
                (m.host, port)
                for i, m in members
                if self.site_of_member(i) != site
                for port in ETCD_PORTS
            ]
            if across:
                self.relays.append(DelayedPaths(ns, across, self.delay_file, RELAY_PORT).start())

    def set_delay(self, one_way_ms: float) -> None:
        set_delay(self.delay_file, one_way_ms)

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        super().close()
