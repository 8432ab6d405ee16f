"""The ``Backend`` object of a wireguard network config, with upstream's keys and defaults
(pkg/backend/wireguard/wireguard.go). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pyflannel.backend.wireguard.keys import InvalidKey, parse_key
from pyflannel.errors import ConfigError

DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821


class Mode(enum.StrEnum):
    SEPARATE = "separate"  # one device per family (flannel-wg, flannel-wg-v6)
    AUTO = "auto"  # one device; the endpoint family chosen per peer
    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclass(frozen=True)
class WireguardConfig:
    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    psk: str = ""  # base64, as wg(8) writes keys; never logged
    mtu: int = 0  # 0: the external interface's MTU (the pod MTU is this - 80)
    mode: Mode = Mode.SEPARATE
    keepalive: int = 0  # PersistentKeepaliveInterval, seconds; 0: off

    def __repr__(self) -> str:  # the PSK is a secret: never in a log line or a traceback
        return (
            f"WireguardConfig(listen_port={self.listen_port}, mode={self.mode.value}, "
            f"keepalive={self.keepalive}, mtu={self.mtu}, psk={'set' if self.psk else 'none'})"
        )


def parse_wireguard_config(backend: dict[str, Any]) -> WireguardConfig:
    doc = {k.lower(): v for k, v in backend.items()}

    def integer(name: str, default: int, low: int, high: int) -> int:
        value = doc.get(name.lower())
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"Backend.{name} must be an integer from {low} to {high}, not {value!r}"
            )
        return value

    mode_text = doc.get("mode", Mode.SEPARATE.value)
    try:
        mode = Mode(mode_text)
    except ValueError:
        raise ConfigError(  # upstream's words, and what is accepted
            f"No valid Mode configured ({mode_text!r}; one of separate, auto, ipv4, ipv6)"
        ) from None
    psk = doc.get("psk") or ""
    if not isinstance(psk, str):
        raise ConfigError("Backend.PSK must be a base64 WireGuard key (wg genpsk)")
    if psk:
        try:
            parse_key(psk)
        except InvalidKey:
            raise ConfigError(
                "could not parse psk: Backend.PSK is not a base64 32-byte key (wg genpsk)"
            ) from None
    return WireguardConfig(
        listen_port=integer("ListenPort", DEFAULT_PORT, 1, 65535),
        listen_port_v6=integer("ListenPortV6", DEFAULT_PORT_V6, 1, 65535),
        psk=psk,
        mtu=integer("MTU", 0, 0, 65535),
        mode=mode,
        keepalive=integer("PersistentKeepaliveInterval", 0, 0, 65535),
    )
