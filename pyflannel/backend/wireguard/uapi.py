"""WireGuard's configuration protocol, as data: the wanted device (private key, port, peers),
the device as read back, and the change that turns one into the other. Pure.

The text form is the cross-platform userspace API (``get=1`` / ``set=1``, key=value lines,
keys in hex) that wireguard-go serves on ``/var/run/wireguard/<device>.sock``; the kernel's
generic netlink carries the same fields (kernel_wg.py maps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# WireGuard's REJECT_AFTER_TIME: a session older than this is dead, so is what it taught
SESSION_LIFETIME = 180


@dataclass(frozen=True)
class WantedPeer:
    public_key: str  # hex
    endpoint: str  # "198.51.100.2:51820" or "[fd00::2]:51821"
    allowed_ips: tuple[str, ...]  # CIDRs
    keepalive: int = 0
    psk: str = ""  # hex, "" for none


@dataclass(frozen=True)
class WantedDevice:
    private_key: str  # hex
    listen_port: int
    peers: dict[str, WantedPeer] = field(default_factory=dict)  # by public key (hex)

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"WantedDevice(listen_port={self.listen_port}, peers={len(self.peers)})"


@dataclass
class PeerState:
    endpoint: str = ""
    allowed_ips: set[str] = field(default_factory=set)
    keepalive: int = 0
    has_psk: bool = False
    last_handshake: int = 0  # seconds since the epoch, 0: never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class DeviceState:
    private_key: str = ""  # hex ("" when none is set)
    listen_port: int = 0
    peers: dict[str, PeerState] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"DeviceState(listen_port={self.listen_port}, peers={len(self.peers)})"


@dataclass
class Change:
    """What ``set`` must send: device fields to set, peers to remove, peers to (re)write."""

    private_key: str | None = None
    listen_port: int | None = None
    remove: list[str] = field(default_factory=list)
    write: list[WantedPeer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.private_key is not None
            or self.listen_port is not None
            or self.remove
            or self.write
        )

    def describe(self) -> list[str]:
        """What the change repairs, in words (public keys shortened; no private key)."""
        words = []
        if self.private_key is not None:
            words.append("WireGuard private key")
        if self.listen_port is not None:
            words.append(f"WireGuard listen port {self.listen_port}")
        words += [f"remove WireGuard peer {k[:8]}…" for k in self.remove]
        words += [
            f"WireGuard peer {p.public_key[:8]}… ({', '.join(p.allowed_ips)})" for p in self.write
        ]
        return words


def diff(
    wanted: WantedDevice,
    have: DeviceState,
    now: float = 0.0,
    published: dict[str, str] | None = None,
) -> Change:
    """What turns ``have`` into ``wanted``. A peer's endpoint the device learned by itself
    (WireGuard roams: it sends to where the peer's last authenticated packet came from, such
    as the outside of the NAT a peer sits behind) is kept while its session lives (a
    handshake within SESSION_LIFETIME of ``now``) and the peer still publishes the endpoint
    ``published`` says was written last (none known, after a start: kept too), or a newly
    published one that differs in its port only; one at another address is written at once. Upstream rewrites every endpoint that differs from the
    lease's, which undoes roaming (Kilo fixed the same, its PR #41). Without ``published``
    every endpoint is the wanted one."""
    change = Change()
    if have.private_key != wanted.private_key:
        change.private_key = wanted.private_key
    if have.listen_port != wanted.listen_port:
        change.listen_port = wanted.listen_port
    change.remove = sorted(set(have.peers) - set(wanted.peers))
    for key, peer in wanted.peers.items():
        state = have.peers.get(key)
        if state is not None and published is not None and roamed(peer, state, now, published):
            peer = replace(peer, endpoint=state.endpoint)
        if (
            state is None
            or state.endpoint != peer.endpoint
            or state.allowed_ips != set(peer.allowed_ips)
            or state.keepalive != peer.keepalive
            or state.has_psk != bool(peer.psk)
        ):
            change.write.append(peer)
    return change


def roamed(peer: WantedPeer, state: PeerState, now: float, published: dict[str, str]) -> bool:
    """The device learned another endpoint for ``peer`` from the peer itself, and it holds:
    the peer still publishes what was written last, or what it publishes now differs from
    the learned one in the port only (a NAT that maps each flow to a port of its own shows
    every peer another port: the one this device learned is the one that works here)."""
    return (
        bool(state.endpoint)
        and state.endpoint != peer.endpoint
        and (
            published.get(peer.public_key, peer.endpoint) == peer.endpoint
            or _host(state.endpoint) == _host(peer.endpoint)
        )
        and state.last_handshake > 0
        and 0 <= now - state.last_handshake < SESSION_LIFETIME
    )


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


def set_request(change: Change) -> str:
    """The ``set=1`` text of a change (ends with the blank line that sends it)."""
    lines = ["set=1"]
    if change.private_key is not None:
        lines.append(f"private_key={change.private_key}")
    if change.listen_port is not None:
        lines.append(f"listen_port={change.listen_port}")
    for key in change.remove:
        lines += [f"public_key={key}", "remove=true"]
    for peer in change.write:
        lines += [
            f"public_key={peer.public_key}",
            f"endpoint={peer.endpoint}",
            f"persistent_keepalive_interval={peer.keepalive}",
            "replace_allowed_ips=true",
            *(f"allowed_ip={cidr}" for cidr in peer.allowed_ips),
        ]
        lines.append(f"preshared_key={peer.psk or '0' * 64}")
    return "\n".join(lines) + "\n\n"


GET_REQUEST = "get=1\n\n"


class UapiError(OSError):
    """The device answered a request with an errno (or not in the protocol)."""


def parse_response(text: str) -> dict[str, list[str]] | None:
    """key -> values of one response, in order; raises UapiError for a non-zero errno."""
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"not the WireGuard protocol: {line[:60]!r}")
        pairs.append((key, value))
    errno_values = [v for k, v in pairs if k == "errno"]
    if not errno_values:
        raise UapiError("the WireGuard device answered without errno")
    if errno_values[-1] != "0":
        raise UapiError(int(errno_values[-1]) if errno_values[-1].isdigit() else 0, "set refused")
    return None


def parse_get(text: str) -> DeviceState:
    """A ``get=1`` response."""
    parse_response(text)
    state = DeviceState()
    peer: PeerState | None = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "private_key":
            state.private_key = value
        elif key == "listen_port":
            state.listen_port = int(value)
        elif key == "public_key":
            peer = state.peers.setdefault(value, PeerState())
        elif peer is None:
            continue
        elif key == "endpoint":
            peer.endpoint = value
        elif key == "allowed_ip":
            peer.allowed_ips.add(value)
        elif key == "persistent_keepalive_interval":
            peer.keepalive = int(value)
        elif key == "preshared_key":
            peer.has_psk = value.strip("0") != ""
        elif key == "last_handshake_time_sec":
            peer.last_handshake = int(value)
        elif key == "rx_bytes":
            peer.rx_bytes = int(value)
        elif key == "tx_bytes":
            peer.tx_bytes = int(value)
    return state
