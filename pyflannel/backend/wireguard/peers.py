"""A wireguard lease as a peer, and the device every peer's lease describes. Pure.

Lease (upstream v0.20.2's, byte for byte): ``{"PublicIP":"…","PublicIPv6":null,"BackendType":
"wireguard","BackendData":{"PublicKey":"<base64>"}}``. A peer is a WireGuard peer of
``flannel-wg``: its public key, endpoint ``<PublicIP>:<port>``, its subnet as the allowed IPs,
the configured keepalive and PSK. The port is the one the peer's lease names (``Port``, which
upstream writes since v0.26.5), else this node's own ListenPort (v0.20.2 names none: every
node listens on the one the network config sets).
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.backend.plan import (
    IPAddress,
    Peer,
    Peer6,
    PeerDataError,
    public_ip_of,
    public_ipv6_of,
)
from pyflannel.backend.wireguard.config import Mode
from pyflannel.backend.wireguard.keys import InvalidKey, parse_key
from pyflannel.backend.wireguard.uapi import WantedDevice, WantedPeer
from pyflannel.subnet.lease import Lease

NAME = "wireguard"  # the backend type, in leases and the network config
ENCAP = "wireguard"  # a peer of the WireGuard device (no kernel entry of its own)


def lease_data(public_key: bytes) -> dict[str, Any]:
    import base64

    return {"PublicKey": base64.b64encode(public_key).decode()}


def wireguard_peer(lease: Lease, own_key: str, port: int) -> Peer:
    """The WireGuard view of a peer's lease (``port``: this node's own, used when the lease
    names none); PeerDataError if unusable."""
    if lease.attrs.backend_type != NAME:
        raise PeerDataError(f"backend type is {lease.attrs.backend_type or 'udp'!r}, not wireguard")
    data = lease.attrs.backend_data
    key = _public_key(data, "BackendData", own_key)
    port = _port(data, "BackendData") or port
    return Peer(lease.subnet, public_ip_of(lease), ENCAP, udp_port=port, public_key=key)


def wireguard_peer6(lease: Lease, subnet6: IPv6Network, own_key: str, port: int = 0) -> Peer6:
    """The IPv6 half (BackendV6Data, PublicIPv6) of a dual-stack wireguard peer."""
    data = lease.attrs.backend_v6_data
    key = _public_key(data, "BackendV6Data", own_key)
    port = _port(data, "BackendV6Data") or port
    return Peer6(subnet6, public_ipv6_of(lease), ENCAP, public_key=key, udp_port=port)


def _port(data: Any, field: str) -> int | None:
    """The peer's own ListenPort (``Port``, upstream v0.26.5+), None if its lease names none."""
    value = {k.lower(): v for k, v in data.items()}.get("port") if isinstance(data, dict) else None
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise PeerDataError(f"{field}.Port {value!r} is not a UDP port")
    return value


def _public_key(data: Any, field: str, own_key: str) -> str:
    if not isinstance(data, dict):
        raise PeerDataError(f"{field} is missing or not a JSON object")
    key = {k.lower(): v for k, v in data.items()}.get("publickey")
    if not isinstance(key, str):
        raise PeerDataError(f"{field}.PublicKey is missing")
    try:
        parse_key(key)
    except InvalidKey as e:
        raise PeerDataError(f"{field}.PublicKey is malformed ({e})") from None
    if key == own_key:
        raise PeerDataError(f"{field}.PublicKey is this node's own public key")
    return key


def endpoint_family(
    mode: Mode, peer: Peer, own_public_ip: IPAddress | None, own_public_ipv6: IPAddress | None
) -> int:
    """Which of a dual-stack peer's addresses one device (Mode auto/ipv4/ipv6) reaches it at,
    as upstream's selectMode: ipv4 and ipv6 say so (a peer without an IPv6 half: IPv4);
    auto takes IPv4 when the peer's is public and this node has one, else IPv6 when both
    ends' are public, else IPv4."""
    if peer.v6 is None or mode is Mode.IPV4:
        return 4
    if mode is Mode.IPV6:
        return 6
    if not _private(peer.public_ip) and own_public_ip is not None:
        return 4
    if (
        not _private(peer.v6.public_ip)
        and own_public_ipv6 is not None
        and not _private(own_public_ipv6)
    ):
        return 6
    return 4


def _private(ip: IPAddress) -> bool:
    """Go's net.IP.IsPrivate: RFC 1918 and RFC 4193 (fc00::/7) only."""
    private = PRIVATE4 if ip.version == 4 else PRIVATE6
    return any(ip in net for net in private)


PRIVATE4 = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
PRIVATE6 = (IPv6Network("fc00::/7"),)


def one_device_halves(
    peers: list[Peer],
    mode: Mode,
    own_public_ip: IPAddress | None,
    own_public_ipv6: IPAddress | None,
) -> list[tuple[Peer | Peer6, tuple[str, ...]]]:
    """One WireGuard peer per node for a single device carrying both families: the half
    whose address is its endpoint, and both subnets as its allowed IPs. The port is the
    device's (the peer's IPv4 ``Port``, else ours): upstream v0.28 takes the IPv6 ``Port``
    in Mode ipv6, where no device listens."""
    halves: list[tuple[Peer | Peer6, tuple[str, ...]]] = []
    for peer in peers:
        allowed = (str(peer.subnet),) + ((str(peer.v6.subnet),) if peer.v6 is not None else ())
        family = endpoint_family(mode, peer, own_public_ip, own_public_ipv6)
        if family == 6:
            assert peer.v6 is not None
            halves.append((replace(peer.v6, udp_port=peer.udp_port), allowed))
        else:
            halves.append((peer, allowed))
    return halves


def wanted_device(
    private_key: bytes,
    port: int,
    halves: list[Peer] | list[Peer6] | list[tuple[Peer | Peer6, tuple[str, ...]]],
    keepalive: int = 0,
    psk: bytes = b"",
) -> WantedDevice:
    """The device of one family listening on ``port``: its peers' halves, each at
    ``<PublicIP>:<its port>`` (IPv6: ``[<PublicIPv6>]:<its port>``; its port: the one its
    lease names, else ``port``), allowed its subnet of that family."""
    import base64

    wanted = {}
    for item in halves:
        half, allowed = item if isinstance(item, tuple) else (item, (str(item.subnet),))
        hex_key = base64.b64decode(half.public_key).hex()
        host = f"[{half.public_ip}]" if half.public_ip.version == 6 else str(half.public_ip)
        wanted[hex_key] = WantedPeer(
            public_key=hex_key,
            endpoint=f"{host}:{half.udp_port or port}",
            allowed_ips=allowed,
            keepalive=keepalive,
            psk=psk.hex(),
        )
    return WantedDevice(private_key.hex(), port, wanted)
