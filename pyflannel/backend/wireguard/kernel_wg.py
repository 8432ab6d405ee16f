"""Kernel WireGuard (the ``wireguard`` module): the link made on pyflannel's own route-netlink
socket (kernel/iproute.py), configured over WireGuard's generic netlink with pyroute2's
``WireGuard``. Only the mapping lives here: the
wanted device, the diff and everything else are shared with the userspace path (uapi.py).

This kernel has no module: the suite exercises only the choice (a failed link add means
userspace), not this code; see the README.
"""

from __future__ import annotations

import base64
import socket
from ipaddress import ip_address

from pyflannel.backend.wireguard.uapi import Change, DeviceState, PeerState


def _b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


def _hex(b64_key: str | bytes) -> str:
    raw = (
        b64_key if isinstance(b64_key, bytes) and len(b64_key) == 32 else base64.b64decode(b64_key)
    )
    return raw.hex()


def create_link(ipr, name: str) -> None:
    """``ip link add <name> type wireguard``; raises where the kernel has no module."""
    if not ipr.link_lookup(ifname=name):
        ipr.add_link(name, "wireguard")


class KernelWireguard:
    kind = "kernel"

    def __init__(self, device: str):
        self.device = device
        self.restarts = 0

    def describe(self) -> str:
        return "kernel (wireguard module)"

    def problem(self) -> str | None:
        return None

    def ensure(self) -> list[str]:
        from pyflannel.kernel.iproute import IPRoute

        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=self.device):
                return []
            create_link(ipr, self.device)
        return [f"device {self.device} recreated"]

    def get(self) -> DeviceState:
        from pyflannel.kernel.rtnl import wireguard_socket

        state = DeviceState()
        with wireguard_socket() as wg:
            for msg in wg.info(self.device):
                key = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
                if key:
                    state.private_key = _hex(key)
                state.listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or state.listen_port
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    public = _hex(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
                    now = state.peers.setdefault(public, PeerState())
                    endpoint = peer.get_attr("WGPEER_A_ENDPOINT") or {}
                    if endpoint.get("addr"):
                        where = ip_address(endpoint["addr"])
                        host = f"[{where}]" if where.version == 6 else str(where)
                        now.endpoint = f"{host}:{endpoint['port']}"
                    now.keepalive = peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0
                    handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                    now.last_handshake = int(handshake.get("tv_sec") or 0)
                    psk = peer.get_attr("WGPEER_A_PRESHARED_KEY")
                    now.has_psk = bool(psk) and _hex(psk).strip("0") != ""
                    for allowed in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                        family = allowed.get_attr("WGALLOWEDIP_A_FAMILY")
                        raw = allowed.get_attr("WGALLOWEDIP_A_IPADDR")
                        addr = raw if isinstance(raw, str) else socket.inet_ntop(family, raw)
                        now.allowed_ips.add(f"{addr}/{allowed.get_attr('WGALLOWEDIP_A_CIDR_MASK')}")
        return state

    def set(self, change: Change) -> None:
        from pyflannel.kernel.rtnl import wireguard_socket

        with wireguard_socket() as wg:
            if change.private_key is not None or change.listen_port is not None:
                wg.set(
                    self.device,
                    listen_port=change.listen_port,
                    private_key=_b64(change.private_key) if change.private_key else None,
                )
            for key in change.remove:
                wg.set(self.device, peer={"public_key": _b64(key), "remove": True})
            for peer in change.write:
                host, _, port = peer.endpoint.rpartition(":")
                wg.set(
                    self.device,
                    peer={
                        "public_key": _b64(peer.public_key),
                        "endpoint_addr": host.strip("[]"),
                        "endpoint_port": int(port),
                        "persistent_keepalive": peer.keepalive,
                        "replace_allowed_ips": True,
                        "allowed_ips": list(peer.allowed_ips),
                        "preshared_key": _b64(peer.psk or "0" * 64),
                    },
                )

    def stop(self) -> None:
        """The kernel device stays (as every other backend's devices do)."""
