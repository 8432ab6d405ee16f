"""What the flannel CNI plugin decides, as pure functions: its network config, subnet.env,
and the delegate config built from them exactly as upstream's plugin builds it
(flannel.go, flannel_linux.go)."""

from __future__ import annotations

from pyflannel.cni import lean_json
from pyflannel.cni.cidr import network

# The plugin starts once per container: only what its work needs, not even ``typing`` at run
# time (mypy takes any TYPE_CHECKING as true); no json, re, ipaddress or collections either
# (lean_json.py, cidr.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")

# CNI error codes (the CNI spec, "Error codes")
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETCONF = 7

# A container ID becomes a file name under dataDir: plain names only (the runtimes' IDs are
# hex or names of this shape: a letter or digit, then also "_", "." or "-", 255 at most), so
# nothing can point outside it.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")


class CniError(Exception):
    """A CNI error object (code, msg, details), printed on stdout with a non-zero exit."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def document(self, cni_version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


class NetConf:
    """The plugin's network config (stdin), with upstream's defaults."""

    __slots__ = (
        "cni_version",
        "data_dir",
        "delegate",
        "ipam",
        "name",
        "raw",
        "runtime_config",
        "subnet_file",
    )

    def __init__(
        self,
        raw: dict[str, Any],
        cni_version: str,
        name: str,
        subnet_file: str,
        data_dir: str,
        delegate: dict[str, Any] | None,
        ipam: dict[str, Any] | None,
        runtime_config: dict[str, Any] | None,
    ):
        self.raw, self.cni_version, self.name = raw, cni_version, name
        self.subnet_file, self.data_dir = subnet_file, data_dir
        self.delegate, self.ipam, self.runtime_config = delegate, ipam, runtime_config


def parse_netconf(stdin: bytes) -> NetConf:
    try:
        raw = lean_json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE_FAILURE, "failed to load netconf", str(e)) from None
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "failed to load netconf", "not a JSON object")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise CniError(INVALID_NETCONF, "cniVersion must be a string")
    if version and version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, "
            f"plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    for key in ("delegate", "ipam", "runtimeConfig"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise CniError(INVALID_NETCONF, f"{key!r} must be a JSON object")
    for key in ("subnetFile", "dataDir", "name"):
        if not isinstance(raw.get(key, ""), str):
            raise CniError(INVALID_NETCONF, f"{key!r} must be a string")
    return NetConf(
        raw=raw,
        cni_version=version,
        name=raw.get("name", ""),
        subnet_file=raw.get("subnetFile") or DEFAULT_SUBNET_FILE,
        data_dir=raw.get("dataDir") or DEFAULT_DATA_DIR,
        delegate=raw.get("delegate"),
        ipam=raw.get("ipam"),
        runtime_config=raw.get("runtimeConfig"),
    )


class FlannelEnv:
    """subnet.env as the plugin needs it: networks (FLANNEL_NETWORK may be a comma-separated
    list), the node's subnet(s), FLANNEL_MTU and FLANNEL_IPMASQ."""

    __slots__ = ("ipmasq", "ipv6_networks", "ipv6_subnet", "mtu", "networks", "subnet")

    def __init__(
        self,
        networks: tuple[str, ...],
        subnet: str | None,
        ipv6_networks: tuple[str, ...],
        ipv6_subnet: str | None,
        mtu: int,
        ipmasq: bool,
    ):
        self.networks, self.subnet, self.mtu, self.ipmasq = networks, subnet, mtu, ipmasq
        self.ipv6_networks, self.ipv6_subnet = ipv6_networks, ipv6_subnet


def parse_subnet_env(text: str, path: str) -> FlannelEnv:
    """subnet.env as upstream's plugin reads it; a CniError naming what is missing or wrong."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()

    def cidrs(key: str) -> tuple[str, ...]:
        out = []
        for item in filter(None, (v.strip() for v in values.get(key, "").split(","))):
            try:
                out.append(network(item))
            except ValueError:
                raise CniError(IO_FAILURE, f"{path}: {key}={item!r} is not a CIDR") from None
        return tuple(out)

    nets, subnets = cidrs("FLANNEL_NETWORK"), cidrs("FLANNEL_SUBNET")
    nets6, subnets6 = cidrs("FLANNEL_IPV6_NETWORK"), cidrs("FLANNEL_IPV6_SUBNET")
    missing = []
    if not nets and not nets6:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if not subnets and not subnets6:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if "FLANNEL_MTU" not in values:
        missing.append("FLANNEL_MTU")
    if "FLANNEL_IPMASQ" not in values:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise CniError(IO_FAILURE, f"{path} is missing {', '.join(missing)}")
    try:
        mtu = int(values["FLANNEL_MTU"])
    except ValueError:
        raise CniError(IO_FAILURE, f"{path}: FLANNEL_MTU is not a number") from None
    return FlannelEnv(
        networks=nets,
        subnet=subnets[0] if subnets else None,
        ipv6_networks=nets6,
        ipv6_subnet=subnets6[0] if subnets6 else None,
        mtu=mtu,
        ipmasq=values["FLANNEL_IPMASQ"] == "true",
    )


def delegate_config(n: NetConf, env: FlannelEnv) -> dict[str, Any]:
    """The config the delegate plugin gets on ADD (and DEL, read back), as upstream builds it."""
    delegate = dict(n.delegate or {})
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CniError(
            INVALID_NETCONF, "'delegate' dictionary, if present, must have (string) 'type' field"
        )
    if "name" in delegate:
        raise CniError(
            INVALID_NETCONF,
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        )
    if "ipam" in delegate:
        raise CniError(
            INVALID_NETCONF,
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
        )
    if n.runtime_config is not None:
        delegate["runtimeConfig"] = n.runtime_config
    delegate["name"] = n.name
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", not env.ipmasq)  # if flannel does not masquerade, the bridge does
    delegate.setdefault("mtu", env.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if n.cni_version:
        delegate["cniVersion"] = n.cni_version
    delegate["ipam"] = delegate_ipam(n.ipam, env)
    return delegate


def delegate_ipam(ipam: dict[str, Any] | None, env: FlannelEnv) -> dict[str, Any]:
    out = dict(ipam or {})
    out.setdefault("type", "host-local")
    ranges = [[{"subnet": s}] for s in (env.subnet, env.ipv6_subnet) if s]
    out["ranges"] = ranges
    routes = out.get("routes", [])
    if not isinstance(routes, list):
        raise CniError(INVALID_NETCONF, "failed to read IPAM routes: ipam.routes is not a list")
    out["routes"] = [*routes, *({"dst": n} for n in env.networks + env.ipv6_networks)]
    return out


def check_container_id(container_id: str) -> str:
    plain = 0 < len(container_id) <= 255 and container_id[0] in _ALNUM
    if not (plain and _ID_CHARS.issuperset(container_id)):
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_CONTAINERID is not a plain name",
            f"{container_id[:80]!r}: letters, digits, '_', '.', '-' only, 1-255 characters",
        )
    return container_id
