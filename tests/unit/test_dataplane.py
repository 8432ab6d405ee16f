"""The data plane (backend/dataplane.py) asks a backend only for what it offers: each
capability is a protocol of its own (backend/base.py), found on the backends that have it, so
the daemon's liveness check, the peer filter and the path healer reach the right ones."""

from ipaddress import IPv4Address

from pyflannel.backend.alloc.backend import AllocBackend
from pyflannel.backend.base import Backend, UserspaceDatapath
from pyflannel.backend.dataplane import DataPlane
from pyflannel.backend.extension.backend import ExtensionBackend
from pyflannel.backend.hostgw.backend import HostGwBackend
from pyflannel.backend.plan import Peer
from pyflannel.backend.udp.backend import UdpBackend
from pyflannel.backend.vxlan.backend import VxlanBackend
from pyflannel.backend.wireguard.backend import WireguardBackend
from pyflannel.kernel.iface import ExtIface
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import Lease, LeaseAttrs


def test_the_backends_that_move_packets_in_userspace_answer_for_them():
    """Liveness asks ``datapath_problem`` of these: a dead UDP worker or wireguard-go is a
    dead node."""
    for backend in (VxlanBackend, UdpBackend, WireguardBackend):
        assert issubclass(backend, UserspaceDatapath), backend
    for backend in (HostGwBackend, AllocBackend, ExtensionBackend):
        assert not issubclass(backend, UserspaceDatapath), backend


class Plain(Backend):
    """A backend with no capability (host-gw's kind)."""

    name = "plain"

    def __init__(self):
        ext = ExtIface("eth0", 2, 1500, IPv4Address("198.51.100.1"), IPv4Address("198.51.100.1"))
        super().__init__(None, parse_network_config('{"Network": "10.1.0.0/16"}'), ext)  # type: ignore[arg-type]

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.public_ip)

    async def peer(self, lease: Lease) -> Peer:
        return Peer(lease.subnet, lease.attrs.public_ip, "plain")


class Capable(Plain):
    """One with every capability (VXLAN's kind)."""

    paths = object()  # the healer's questions (a marker here)

    @property
    def encapsulation_port(self) -> int | None:
        return 8472

    def encapsulating_peers(self) -> list[str]:
        return ["198.51.100.2"]

    def datapath_stats(self) -> dict | None:
        return {"datapath": "test"}

    def datapath_problem(self) -> str | None:
        return "worker 1 died"


def test_the_data_plane_asks_only_what_a_backend_offers():
    plain, capable = DataPlane(Plain()), DataPlane(Capable())
    assert plain.encapsulation_port is None and plain.encapsulating_peers() == []
    assert plain.datapath_stats() is None and plain.datapath_problem() is None
    assert plain.alternate_paths is None
    assert capable.encapsulation_port == 8472 and capable.encapsulating_peers() == ["198.51.100.2"]
    assert capable.datapath_stats() == {"datapath": "test"}
    assert capable.datapath_problem() == "worker 1 died"
    assert capable.alternate_paths is Capable.paths
