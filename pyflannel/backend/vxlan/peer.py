"""What a lease means to the VXLAN backend: its VTEP MAC (BackendData.VtepMAC, Go's MAC
forms), its public IP, and for dual-stack its IPv6 half (BackendV6Data, PublicIPv6); the
kernel entries such a peer needs (neighbour, FDB entry, onlink route; or with DirectRouting a
plain route via its public IP). Pure."""

from __future__ import annotations

from ipaddress import IPv6Network
from typing import Any

from pyflannel.backend.plan import (
    Peer,
    Peer6,
    PeerDataError,
    overlay_entries,
    parse_mac,
    public_ip_of,
    public_ipv6_of,
    underlay_route,
)
from pyflannel.subnet.lease import Lease

NAME = "vxlan"  # the backend type, in leases and the network config
ENCAP_VXLAN = "vxlan"  # a peer reached through the VXLAN device
ENCAP_DIRECT = "direct"  # a peer on the same link: a plain route via its public IP


def _vtep_mac(data: Any, field: str = "BackendData") -> str:
    if data is None or data == {}:
        raise PeerDataError(f"{field} is missing")
    if not isinstance(data, dict):
        raise PeerDataError(f"{field} is not a JSON object")
    mac = parse_mac({k.lower(): v for k, v in data.items()}.get("vtepmac"))
    if int(mac.split(":")[0], 16) & 1:
        raise PeerDataError(f"VtepMAC {mac} is a multicast address")
    return mac


def vxlan_peer(lease: Lease, direct: bool = False) -> Peer:
    """The VXLAN view of a peer's lease; raises PeerDataError if it is not a usable one."""
    if lease.attrs.backend_type != NAME:
        raise PeerDataError(f"backend type is {lease.attrs.backend_type or 'udp'!r}, not vxlan")
    mac = _vtep_mac(lease.attrs.backend_data)
    ip = public_ip_of(lease)
    if direct:
        return Peer(
            lease.subnet, ip, ENCAP_DIRECT, vtep_mac=mac, entries=underlay_route(lease.subnet, ip)
        )
    return Peer(
        lease.subnet, ip, ENCAP_VXLAN, vtep_mac=mac, entries=overlay_entries(lease.subnet, mac, ip)
    )


def vxlan_peer6(lease: Lease, subnet6: IPv6Network, direct: bool = False) -> Peer6:
    """The IPv6 half of a VXLAN peer (BackendV6Data, PublicIPv6); PeerDataError if unusable.
    Its VtepMAC must differ from the IPv4 one: they are two devices, and FDB entries are
    keyed by MAC."""
    mac6 = _vtep_mac(lease.attrs.backend_v6_data, "BackendV6Data")
    try:
        mac4 = _vtep_mac(lease.attrs.backend_data)
    except PeerDataError:
        mac4 = ""
    if mac6 == mac4:
        raise PeerDataError(f"BackendV6Data.VtepMAC {mac6} is also the IPv4 device's")
    ip6 = public_ipv6_of(lease)
    if direct:
        return Peer6(
            subnet6, ip6, ENCAP_DIRECT, vtep_mac=mac6, entries=underlay_route(subnet6, ip6)
        )
    return Peer6(
        subnet6, ip6, ENCAP_VXLAN, vtep_mac=mac6, entries=overlay_entries(subnet6, mac6, ip6)
    )
