"""A wireguard lease as a peer, and the device every peer's lease describes. Pure.

Lease (upstream, byte for byte): ``{"PublicIP":"…","PublicIPv6":null,"BackendType":"wireguard",
"BackendData":{"PublicKey":"<base64>"}}``. A peer is a WireGuard peer of ``flannel-wg``: its
public key, endpoint ``<PublicIP>:<ListenPort>`` (every node listens on the same port), its
subnet as the allowed IPs, the configured keepalive and PSK.
"""

from __future__ import annotations

from typing import Any

from pyflannel.backend.plan import WIREGUARD_BACKEND, Encap, Peer, PeerDataError, public_ip_of
from pyflannel.backend.wireguard.keys import InvalidKey, parse_key
from pyflannel.backend.wireguard.uapi import WantedDevice, WantedPeer
from pyflannel.subnet.lease import Lease


def lease_data(public_key: bytes) -> dict[str, Any]:
    import base64

    return {"PublicKey": base64.b64encode(public_key).decode()}


def wireguard_peer(lease: Lease, own_key: str, port: int) -> Peer:
    """The WireGuard view of a peer's lease; PeerDataError if unusable."""
    if lease.attrs.backend_type != WIREGUARD_BACKEND:
        raise PeerDataError(f"backend type is {lease.attrs.backend_type or 'udp'!r}, not wireguard")
    data = lease.attrs.backend_data
    if not isinstance(data, dict):
        raise PeerDataError("BackendData is missing or not a JSON object")
    key = {k.lower(): v for k, v in data.items()}.get("publickey")
    if not isinstance(key, str):
        raise PeerDataError("BackendData.PublicKey is missing")
    try:
        parse_key(key)
    except InvalidKey as e:
        raise PeerDataError(f"BackendData.PublicKey is malformed ({e})") from None
    if key == own_key:
        raise PeerDataError("BackendData.PublicKey is this node's own public key")
    return Peer(lease.subnet, public_ip_of(lease), Encap.WIREGUARD, udp_port=port, public_key=key)


def wanted_device(
    private_key: bytes, port: int, peers: list[Peer], keepalive: int = 0, psk: bytes = b""
) -> WantedDevice:
    import base64

    wanted = {}
    for peer in peers:
        hex_key = base64.b64decode(peer.public_key).hex()
        wanted[hex_key] = WantedPeer(
            public_key=hex_key,
            endpoint=f"{peer.public_ip}:{peer.udp_port}",
            allowed_ips=(str(peer.subnet),),
            keepalive=keepalive,
            psk=psk.hex(),
        )
    return WantedDevice(private_key.hex(), port, wanted)
