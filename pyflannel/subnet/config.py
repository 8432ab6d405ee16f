"""The cluster-wide network configuration stored at ``<prefix>/config``.

Parsing and validation follow upstream flannel (pkg/subnet/config.go) exactly: JSON keys match
case-insensitively and the last duplicate wins (Go ``encoding/json``), unknown keys are ignored,
``Network`` host bits are masked, SubnetLen/SubnetMin/SubnetMax get the same defaults and the
error texts are upstream's, so an operator's existing configs and runbooks keep working.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.errors import ConfigError, UnsupportedConfig

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str
    backend: dict[str, Any] = field(default_factory=dict)
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None

    @property
    def cidr(self) -> IPv4Network:
        """The IPv4 network (pyflannel serves IPv4 networks; the daemon refuses others)."""
        if self.network is None:
            raise ConfigError("the network config has no IPv4 Network")
        return self.network

    @property
    def cidr6(self) -> IPv6Network | None:
        """The IPv6 network of a dual-stack config (EnableIPv6), else None."""
        return self.ipv6_network if self.enable_ipv6 else None

    @property
    def subnet_count(self) -> int:
        """How many IPv4 subnets SubnetMin..SubnetMax can hold."""
        size = 1 << (32 - self.subnet_len)
        span = int(self.subnet_max) - int(self.subnet_min)
        return 0 if span < 0 else span // size + 1

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A key of the ``Backend`` object, matched case-insensitively like upstream."""
        return _casefold(self.backend).get(name.lower(), default)


@dataclass(frozen=True)
class _Family:
    """What differs between the IPv4 and IPv6 checks: widths, defaults and error texts."""

    bits: int
    max_len: int  # largest allowed SubnetLen
    max_prefix: int  # smallest useful network (largest prefix)
    default_len_upto: int  # prefixes up to this get the default SubnetLen
    default_len: int
    network_name: str
    min_name: str
    max_name: str
    too_small: str


_V4 = _Family(
    32,
    30,
    28,
    22,
    24,
    "Network",
    "SubnetMin",
    "SubnetMax",
    "network is too small. Minimum useful network prefix is /28",
)
_V6 = _Family(
    128,
    126,
    124,
    62,
    64,
    "IPv6Network",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "IPv6Network is too small. Minimum useful network prefix is /124",
)


def parse_network_config(raw: str | bytes) -> NetworkConfig:
    """Decode and validate the JSON config; raise ConfigError with upstream's message."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"invalid JSON in network config: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("network config must be a JSON object")
    obj = _casefold(doc)

    enable_ipv4 = _bool(obj, "EnableIPv4", True)
    enable_ipv6 = _bool(obj, "EnableIPv6", False)
    backend = obj.get("backend")
    if backend is not None and not isinstance(backend, dict):
        raise ConfigError(
            "error decoding Backend property of config: Backend must be a JSON object"
        )
    backend_type = "udp" if "backend" not in obj else _casefold(backend or {}).get("type", "")
    if not isinstance(backend_type, str):
        raise ConfigError("error decoding Backend property of config: Type must be a string")

    v4 = v6 = (None, 0, None, None)
    if enable_ipv4:
        v4 = _check_family(
            _V4,
            _network(obj, "Network", IPv4Network),
            _uint(obj, "SubnetLen"),
            _address(obj, "SubnetMin", IPv4Address),
            _address(obj, "SubnetMax", IPv4Address),
        )
    if enable_ipv6:
        v6 = _check_family(
            _V6,
            _network(obj, "IPv6Network", IPv6Network),
            _uint(obj, "IPv6SubnetLen"),
            _address(obj, "IPv6SubnetMin", IPv6Address),
            _address(obj, "IPv6SubnetMax", IPv6Address),
        )
    return NetworkConfig(
        network=v4[0],
        subnet_len=v4[1],
        subnet_min=v4[2] or IPv4Address(0),
        subnet_max=v4[3] or IPv4Address(0),
        backend_type=backend_type,
        backend=dict(backend or {}),
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        enable_nftables=_bool(obj, "EnableNFTables", False),
        ipv6_network=v6[0],
        ipv6_subnet_len=v6[1],
        ipv6_subnet_min=v6[2],
        ipv6_subnet_max=v6[3],
    )


def check_supported(cfg: NetworkConfig) -> NetworkConfig:
    """``cfg`` if pyflannel serves it, else UnsupportedConfig (waiting cannot fix it)."""
    if not cfg.enable_ipv4:
        raise UnsupportedConfig(
            "EnableIPv4 is false: IPv6-only networks are not supported with etcd (upstream "
            "v0.20.2 writes them as 0.0.0.0-0&<v6> keys that overlap, so only one node "
            "can join); use a dual-stack config (EnableIPv4 and EnableIPv6)"
        )
    return cfg


def _check_family(fam: _Family, network, subnet_len: int, smin, smax):
    """Upstream's CheckNetworkConfig for one address family: defaults, then range checks."""
    if network is None:
        raise ConfigError(
            f"please define a correct {fam.network_name} parameter in the flannel config"
        )
    prefix = network.prefixlen
    if subnet_len > 0:
        if subnet_len > fam.max_len:
            raise ConfigError(f"SubnetLen must be less than /{fam.max_len + 1}")
        if subnet_len < prefix + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    elif prefix > fam.max_prefix:
        raise ConfigError(fam.too_small)
    elif prefix <= fam.default_len_upto:
        subnet_len = fam.default_len
    else:
        subnet_len = prefix + 2

    size = 1 << (fam.bits - subnet_len)
    base = int(network.network_address)
    addr = type(network.network_address)
    if smin is None or int(smin) == 0:
        smin = addr(base + size)
    elif smin not in network:
        raise ConfigError(f"{fam.min_name} is not in the range of the {fam.network_name}")
    if smax is None or int(smax) == 0:
        smax = addr(base + network.num_addresses - size)
    elif smax not in network:
        raise ConfigError(f"{fam.max_name} is not in the range of the {fam.network_name}")
    for name, value in ((fam.min_name, smin), (fam.max_name, smax)):
        if int(value) % size:
            raise ConfigError(f"{name} is not on a SubnetLen boundary: {value}")
    return network, subnet_len, smin, smax


def _casefold(obj: dict[str, Any]) -> dict[str, Any]:
    """Lower-case keys; a later duplicate wins, as in Go's case-insensitive decoding."""
    return {k.lower(): v for k, v in obj.items()}


def _present(obj: dict[str, Any], key: str) -> Any:
    return obj.get(key.lower())  # JSON null behaves like an absent key, as in Go


def _bool(obj: dict[str, Any], key: str, default: bool) -> bool:
    value = _present(obj, key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {json.dumps(value)}")
    return value


def _uint(obj: dict[str, Any], key: str) -> int:
    value = _present(obj, key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer, not {json.dumps(value)}")
    return value


def _network(obj: dict[str, Any], key: str, kind: type[IPNetwork]) -> IPNetwork | None:
    value = _present(obj, key)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(
            f'{key} must be a CIDR string such as "10.1.0.0/16", not {json.dumps(value)}'
        ) from None
    if not isinstance(net, kind):
        raise ConfigError(
            f"{key} {value} is not an {'IPv4' if kind is IPv4Network else 'IPv6'} network"
        )
    return net


def _address(obj: dict[str, Any], key: str, kind: type[IPAddress]) -> IPAddress | None:
    value = _present(obj, key)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        return kind(value.strip('"'))
    except ValueError:
        raise ConfigError(f"{key} must be an address string, not {json.dumps(value)}") from None


def config_changes(running: NetworkConfig, stored: NetworkConfig) -> list[str]:
    """What differs between the config a daemon runs with and the one now in etcd, in
    words ("Network 10.1.0.0/16 -> 10.5.0.0/16"); empty if nothing that matters changed."""
    changes = []
    for name, label in (
        ("network", "Network"),
        ("subnet_len", "SubnetLen"),
        ("subnet_min", "SubnetMin"),
        ("subnet_max", "SubnetMax"),
        ("backend_type", "Backend.Type"),
        ("enable_ipv4", "EnableIPv4"),
        ("enable_ipv6", "EnableIPv6"),
        ("enable_nftables", "EnableNFTables"),
        ("ipv6_network", "IPv6Network"),
    ):
        old, new = getattr(running, name), getattr(stored, name)
        derived = name in ("subnet_min", "subnet_max") and running.network != stored.network
        if old != new and not derived:  # defaults that follow a new Network are no news
            changes.append(f"{label} {old} -> {new}")
    old_backend = {k.lower(): v for k, v in running.backend.items() if k.lower() != "type"}
    new_backend = {k.lower(): v for k, v in stored.backend.items() if k.lower() != "type"}
    for key in sorted(old_backend.keys() | new_backend.keys()):
        if old_backend.get(key) != new_backend.get(key):
            changes.append(f"Backend.{key} {old_backend.get(key)} -> {new_backend.get(key)}")
    return changes
