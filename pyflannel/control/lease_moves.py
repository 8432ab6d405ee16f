"""When this node's lease moves (lost and re-acquired as another subnet, or renewed with
other attributes): the data plane configured for the new one, the peers sorted again (the
old subnet may now be a peer's), the traffic rules and subnet.env rewritten for it. In this
order, so that nothing points at the new subnet before the device holds it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyflannel.backend.dataplane import DataPlane
from pyflannel.control.peer_programmer import PeerProgrammer
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.table import LeaseTable
from pyflannel.traffic.families import NetworkRules
from pyflannel.traffic.ownership import Cluster


class LeaseMoves:
    def __init__(
        self,
        plane: DataPlane,
        peers: PeerProgrammer,
        table: LeaseTable,
        traffic: NetworkRules,
        rule_networks: Callable[[Lease], Sequence[tuple[Cluster, Cluster]]],
        write_env: Callable[[Lease], None],
    ):
        self.plane, self.peers, self.table, self.traffic = plane, peers, table, traffic
        self.rule_networks, self.write_env = rule_networks, write_env

    async def moved(self, old: Lease | None, new: Lease) -> None:
        await self.plane.assign(new)
        await self.peers.changed(self.table.set_own(new.subnet))
        await self.traffic.setup(list(self.rule_networks(new)))
        self.write_env(new)
