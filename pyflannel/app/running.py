"""What a running daemon is made of, once started: the network, the data plane, the control
loops. Read by the daemon (app/daemon.py) and by what it publishes (app/observe.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pyflannel.backend.dataplane import DataPlane
from pyflannel.control.config_watch import ConfigWatch
from pyflannel.control.lease_keeper import LeaseKeeper
from pyflannel.control.peer_programmer import PeerProgrammer
from pyflannel.control.peer_watch import PeerWatch
from pyflannel.control.reconciling import ReconcileLoop
from pyflannel.control.site_records import SiteRecords
from pyflannel.control.underlay import UnderlayFollower
from pyflannel.kernel.iface import ExtIface
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.table import LeaseTable


@dataclass
class Running:
    """What the start-up built."""

    network: NetworkConfig
    plane: DataPlane  # the backend at work
    keeper: LeaseKeeper
    table: LeaseTable
    watch: PeerWatch
    config_watch: ConfigWatch
    underlay: UnderlayFollower
    peers: PeerProgrammer
    reconciler: ReconcileLoop
    sites: SiteRecords | None = None  # --site: this node's record, the others' followed

    @property
    def lease(self) -> Lease:
        lease = self.keeper.lease
        assert lease is not None, "a running daemon holds a lease"
        return lease

    @property
    def ext(self) -> ExtIface:
        return self.underlay.ext
