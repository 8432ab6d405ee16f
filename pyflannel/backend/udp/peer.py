"""What a lease means to the UDP path: the port its owner accepts flannel's UDP encapsulation
on. Upstream UDP nodes write no BackendType and all use the network's port; pyflannel nodes
that fell back to UDP write BackendType "udp" with their Port; pyflannel VXLAN nodes advertise
``UDPPort`` in their BackendData (upstream ignores unknown keys there). Pure."""

from __future__ import annotations

from pyflannel.backend.plan import (
    KernelState,
    Peer,
    PeerDataError,
    backend_data,
    public_ip_of,
    tunnel_route,
)
from pyflannel.subnet.lease import Lease

NAME = "udp"  # the backend type, in leases and the network config
ENCAP_UDP = "udp"  # a peer reached through the userspace UDP tunnel


def udp_port(lease: Lease, default: int) -> int | None:
    """The port at which a lease's owner accepts flannel UDP encapsulation, or None."""
    data = backend_data(lease)
    kind = lease.attrs.backend_type
    if kind == "" or kind == NAME:
        port = data.get("port", default)
    elif kind == "vxlan":
        port = data.get("udpport")
        if port is None:
            return None
    else:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise PeerDataError(f"UDP port {port!r} is not a port number")
    return port


def udp_peer(lease: Lease, default_port: int, routed: bool = False) -> Peer:
    """A peer reached over UDP; ``routed``: its subnet gets a route into the tunnel device
    (a vxlan node's UDP-only peers; the UDP backend routes the whole network there)."""
    port = udp_port(lease, default_port)
    if port is None:
        raise PeerDataError(
            f"backend type {lease.attrs.backend_type!r} does not accept UDP encapsulation"
        )
    entries = tunnel_route(lease.subnet) if routed else KernelState()
    return Peer(lease.subnet, public_ip_of(lease), ENCAP_UDP, udp_port=port, entries=entries)
