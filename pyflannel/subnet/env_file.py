"""subnet.env: what Docker and CNI read to learn the node's subnet and MTU (subnet.go:70-92).

Same keys, order and value formats as upstream; written atomically (temp file in the same
directory, fsync, rename) with mode 0644 regardless of umask, like upstream's renameio.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network
    subnet: IPv4Network
    mtu: int
    ipmasq: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None

    @classmethod
    def for_lease(cls, cfg: NetworkConfig, lease: Lease, mtu: int, ipmasq: bool) -> SubnetEnv:
        """What a node holding ``lease`` writes: both families on a dual-stack network."""
        dual = cfg.cidr6 is not None and lease.ipv6_subnet is not None
        return cls(
            cfg.cidr,
            lease.subnet,
            mtu,
            ipmasq,
            ipv6_network=cfg.cidr6 if dual else None,
            ipv6_subnet=lease.ipv6_subnet if dual else None,
        )

    def render(self) -> str:
        lines = [
            f"FLANNEL_NETWORK={self.network}",
            f"FLANNEL_SUBNET={_first_host(self.subnet)}",
        ]
        if self.ipv6_network is not None and self.ipv6_subnet is not None:
            lines += [
                f"FLANNEL_IPV6_NETWORK={self.ipv6_network}",
                f"FLANNEL_IPV6_SUBNET={_first_host(self.ipv6_subnet)}",
            ]
        lines += [f"FLANNEL_MTU={self.mtu}", f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}"]
        return "".join(line + "\n" for line in lines)


def _first_host(subnet) -> str:
    """``10.5.72.0/24`` -> ``10.5.72.1/24``: upstream writes the subnet's first address."""
    return f"{subnet.network_address + 1}/{subnet.prefixlen}"


def parse_env(text: str) -> dict[str, str]:
    """KEY=value lines; blank lines and comments ignored, surrounding quotes stripped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def _read_cidr(path: str | os.PathLike, key: str, kind: type[IPv4Network] | type[IPv6Network]):
    """The first valid ``kind`` network in a comma-separated value, masked, or None.

    Like upstream (main.go ReadCIDRFromSubnetFile): invalid items are skipped.
    """
    try:
        values = parse_env(Path(path).read_text())
    except (OSError, UnicodeDecodeError):
        return None
    for item in values.get(key, "").split(","):
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            continue
        if isinstance(net, kind):
            return net
    return None


def previous_subnet(path: str | os.PathLike) -> IPv4Network | None:
    """The subnet recorded in an existing subnet.env (FLANNEL_SUBNET), or None."""
    return _read_cidr(path, "FLANNEL_SUBNET", IPv4Network)


def previous_subnet6(path: str | os.PathLike) -> IPv6Network | None:
    """The IPv6 subnet recorded in an existing subnet.env (FLANNEL_IPV6_SUBNET), or None."""
    return _read_cidr(path, "FLANNEL_IPV6_SUBNET", IPv6Network)


def previous_network(path: str | os.PathLike) -> IPv4Network | None:
    """The network (FLANNEL_NETWORK) an existing subnet.env names, or None."""
    return _read_cidr(path, "FLANNEL_NETWORK", IPv4Network)


def previous_network6(path: str | os.PathLike) -> IPv6Network | None:
    """The IPv6 network (FLANNEL_IPV6_NETWORK) an existing subnet.env names, or None."""
    return _read_cidr(path, "FLANNEL_IPV6_NETWORK", IPv6Network)


def write_atomic(path: str | os.PathLike, text: str, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``text`` atomically; return False if it already had that text."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
