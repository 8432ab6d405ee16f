"""The daemon's options: one typed object, built once from flags, then ``FLANNELD_*``
environment variables, then defaults (upstream main.go + coreos flagutil semantics).

Flag names, meanings and defaults are upstream's, so existing unit files and environment
files work. Go-style single-dash long flags (``-etcd-endpoints=...``) are accepted too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflannel.errors import OptionsError
from pyflannel.kernel.iface import IfaceChoice
from pyflannel.subnet.env_file import parse_env
from pyflannel.subnet.node_record import check_site_name
from pyflannel.subnet.stores import StoreOptions, parse_endpoint

if TYPE_CHECKING:  # the lower layers' own option types, imported when asked for
    from pyflannel.ops.doctor.probes import DoctorOptions
    from pyflannel.ops.status.client import StatusEndpoint
    from pyflannel.traffic.families import TrafficSettings

ENV_PREFIX = "FLANNELD_"
# pyflannel.service's EnvironmentFile (systemd/pyflannel.service, the Debian package's conffile).
SERVICE_ENV_FILE = "/etc/default/pyflannel"
MAX_RENEW_MARGIN = 1439  # minutes; upstream: 0 < margin < 1440
MAX_UDP_WORKERS = 64


class CommaList(list):
    """A flag holding a comma-separated list; given twice, the last one wins (Go semantics)."""


def option(default: Any, help: str, *, kind: type | None = None, layer: str = "") -> Any:
    """One option, declared once, as a field of Options: its name gives the flag
    (``--etcd-endpoints``), the variable (``FLANNELD_ETCD_ENDPOINTS``) and its line in
    /etc/default/pyflannel; its type the parsing (``list[str]``: repeatable); ``kind`` where
    the type is not enough (CommaList); ``layer`` the lower layer's option type it belongs to
    ("store": how to reach etcd; "backend": the backends' own settings)."""
    metadata = {"help": help, "kind": kind, "layer": layer}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Options:
    etcd_endpoints: list[str] = option(
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"],
        "comma-separated etcd endpoints (default %(default)s)",
        kind=CommaList,
        layer="store",
    )
    etcd_prefix: str = option(
        "/coreos.com/network",
        "etcd key prefix of the network (default %(default)s)",
    )
    etcd_keyfile: str = option(
        "",
        "TLS client key file for etcd",
        layer="store",
    )
    etcd_certfile: str = option(
        "",
        "TLS client certificate file for etcd",
        layer="store",
    )
    etcd_cafile: str = option(
        "",
        "CA file that signed etcd's server certificate",
        layer="store",
    )
    etcd_username: str = option(
        "",
        "username for etcd authentication",
        layer="store",
    )
    etcd_password: str = option(
        "",
        "password for etcd authentication",
        layer="store",
    )
    iface: list[str] = option(
        [],
        "interface (name or IP) to use for inter-host traffic; repeatable, first match wins "
        "(default: the default-route interface)",
    )
    iface_regex: list[str] = option(
        [],
        "regex matched against interface IPs, then names; repeatable; tried after --iface",
    )
    iface_can_reach: str = option(
        "",
        "use the interface and source address that reach this IP; on a dual-stack network an "
        "IPv6 target (alone, or after the IPv4 one with a comma) chooses the IPv6 address too",
    )
    public_ip: str = option(
        "",
        "IPv4 address advertised to other nodes (default: the interface's)",
    )
    public_ipv6: str = option(
        "",
        "IPv6 address advertised to other nodes on a dual-stack network (EnableIPv6); default: "
        "the interface's first global IPv6 address",
    )
    subnet_file: str = option(
        "/run/flannel/subnet.env",
        "file the node's subnet and MTU are written to (default %(default)s)",
    )
    subnet_lease_renew_margin: int = option(
        60,
        "renew the lease this many minutes before it expires, 1..1439 (default %(default)s; "
        "pyflannel also renews at half the TTL)",
    )
    subnet_lease_ttl: int = option(
        86400,
        "seconds a lease lives without renewal (pyflannel only; default %(default)s, upstream's"
        " fixed 24 h)",
    )
    reconcile_interval: float = option(
        30.0,
        "seconds between full checks of the kernel state (pyflannel only; default %(default)s)",
    )
    probe_interval: float = option(
        10.0,
        "seconds between probe rounds of every peer through the overlay (a small and a "
        "full-size don't-fragment ICMP echo each; 0 turns the prober off; pyflannel only; "
        "default %(default)s)",
    )
    probe_rate: float = option(
        50.0,
        "probes per second at most, all peers together (a large cluster is probed round robin, "
        "so a round takes longer; pyflannel only; default %(default)s)",
    )
    heal_paths: bool = option(
        True,
        "vxlan: move a peer to UDP encapsulation (its lease's UDPPort) while the prober finds "
        "VXLAN to it broken and UDP working, and back when VXLAN works again; needs "
        "--probe-interval > 0 (default %(default)s; pyflannel only)",
    )
    fix_path_mtu: bool = option(
        True,
        "where the prober finds a peer's path an MTU black hole, measure what it carries "
        "(don't-fragment probes) and fix that path only: its route's MTU (mtu lock) and a TCP "
        "MSS clamp for the peer's subnet, removed when the full size passes again; needs "
        "--probe-interval > 0 (default %(default)s; pyflannel only)",
    )
    backend_fallback: str = option(
        "auto",
        "when the network's backend is vxlan: 'auto' falls back to UDP encapsulation if this "
        "node cannot create a VXLAN device, 'udp' forces UDP on this node, 'off' never falls "
        "back (default %(default)s; pyflannel only)",
        layer="backend",
    )
    udp_fallback_port: int = option(
        8285,
        "UDP port for encapsulation with UDP-only peers in a vxlan network, advertised in the "
        "lease (default %(default)s; pyflannel only)",
        layer="backend",
    )
    udp_datapath: str = option(
        "auto",
        "how the UDP data path waits for packets: auto (= epoll, a plain epoll loop: the "
        "lowest latency), asyncio (the stdlib loop), uvloop (needs the "
        "uvloop package), or threads (measured slower); default %(default)s; pyflannel only",
        layer="backend",
    )
    udp_priority: str = option(
        "auto",
        "UDP backend: the packet threads' CPU priority: auto (real time, SCHED_RR 1, while "
        "neighbours make them wait for the CPU, else ordinary), realtime (always), or normal; "
        "real time only while they use under a fifth of a core, so a lone packet goes ahead "
        "of busy neighbours and bulk traffic competes like any process (default %(default)s; "
        "pyflannel only)",
        layer="backend",
    )
    udp_fastpath: bool = option(
        True,
        "UDP backend: batch with kernel offloads (TCP super-packets from the TUN cut here, "
        "UDP_SEGMENT sends, UDP_GRO receives coalesced into GSO writes to the TUN); each piece "
        "falls back per packet where the kernel refuses it (default %(default)s; pyflannel "
        "only)",
        layer="backend",
    )
    udp_workers: int = option(
        0,
        "UDP backend: data-path worker processes, each with its own TUN queue and socket; flows"
        " are spread over them (default 0: one per core; pyflannel only)",
        layer="backend",
    )
    wireguard_datapath: str = option(
        "auto",
        "wireguard backend: auto (the kernel's module if it can make a link, else userspace "
        "wireguard-go), kernel, or userspace (default %(default)s; pyflannel only)",
        layer="backend",
    )
    site: str = option(
        "",
        "this node's site (a datacenter, an office, a home): nodes of one site reach each "
        "other by the network's backend over their --iface addresses, in clear; nodes of other "
        "sites through an encrypted WireGuard site link over their outside addresses "
        "(--public-ip, or learned behind NAT); published beside the lease; nodes without a site "
        "(and upstream flanneld) are reached as before (pyflannel only)",
        layer="backend",
    )
    site_port: int = option(
        51830,
        "UDP port of the site link (flannel-site) with --site (default %(default)s; pyflannel only)",
    )
    site_keepalive: int = option(
        25,
        "seconds between the site link's keepalives to each node of another site: they keep a "
        "NAT router's mapping open and teach the other side where this node is (0: none; "
        "default %(default)s; pyflannel only)",
    )
    ip_masq: bool = option(
        False,
        "masquerade traffic from pods to outside the overlay (upstream's FLANNEL-POSTRTG rules;"
        " also written to subnet.env as FLANNEL_IPMASQ)",
    )
    ip_masq_fully_random_disable: bool = option(
        False,
        "never use --random-fully in masquerade rules",
    )
    iptables_forward_rules: bool = option(
        True,
        "accept forwarded traffic to and from the network (upstream's FLANNEL-FWD chain; "
        "default %(default)s)",
    )
    ip_blackhole_route: bool = option(
        False,
        "a blackhole route for this node's own subnet (metric 4294967295: the CNI bridge's "
        "route wins), so that traffic to unassigned pod addresses is dropped here instead of "
        "leaving by the default route; kept like every route of ours (upstream v0.27.1: "
        "re-added every --iptables-resync)",
    )
    enable_br_netfilter: bool = option(
        False,
        "load br_netfilter and set net.bridge.bridge-nf-call-iptables (and -ip6tables on a "
        "dual-stack network) to 1, so that traffic between pods on one bridge passes iptables "
        "(kube-proxy's Services); without it a missing setting is reported by status and "
        "doctor, never fatal (upstream v0.26+ exits; pyflannel only)",
    )
    vxlan_peer_filter: bool = option(
        False,
        "accept VXLAN datagrams only from peers' public IPs (iptables chain "
        "FLANNEL-VXLAN-<port>, one rule per peer; pyflannel only)",
    )
    healthz_ip: str = option(
        "127.0.0.1",
        "address of the health/metrics/status endpoint (default %(default)s; upstream's default"
        " is 0.0.0.0)",
    )
    healthz_port: int = option(
        8471,
        "port of that endpoint, 0 to turn it off (default %(default)s; upstream's default is "
        "0); serves /healthz, /readyz, /metrics and /status. Not given and taken (another "
        "network's daemon on this host): the next free port, logged and recorded in "
        "<subnet-file>.lock for `pyflannel status`",
    )
    iptables_resync: int = option(
        5,
        "seconds between checks that the iptables rules are intact (default %(default)s)",
    )
    v: int = option(
        0,
        "log verbosity: 0 informational, 1 or more debug (default %(default)s)",
        layer="backend",
    )

    # Which options were set by a flag or FLANNELD_* (the others are defaults), and which of
    # those by FLANNELD_* (the environment).
    given: frozenset[str] = field(default=frozenset(), compare=False)
    from_env: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def store(self) -> StoreOptions:
        """How to reach the store these options describe (endpoints, prefix, TLS, auth)."""
        return StoreOptions(
            endpoints=tuple(self.etcd_endpoints),
            prefix=self.etcd_prefix,
            cafile=self.etcd_cafile,
            certfile=self.etcd_certfile,
            keyfile=self.etcd_keyfile,
            username=self.etcd_username,
            password=self.etcd_password,
        )

    @property
    def store_given(self) -> bool:
        """Were any of the store's settings given (flags or FLANNELD_*)? When none were, the
        tools typed beside a running daemon take its settings (``pyflannel trace``)."""
        return any(_layer(f) == "store" and f.name in self.given for f in fields(self))

    @property
    def password_in(self) -> str:
        """Where this process's etcd password is (never what it is): its command line
        (``--etcd-password``), its environment (``FLANNELD_ETCD_PASSWORD``), or nowhere."""
        if not self.etcd_password:
            return ""
        return env_name("etcd-password") if "etcd_password" in self.from_env else "--etcd-password"

    @property
    def traffic(self) -> TrafficSettings:
        """The traffic rules' options (traffic layer)."""
        from pyflannel.traffic.families import TrafficSettings

        return TrafficSettings(
            masquerade=self.ip_masq,
            forward=self.iptables_forward_rules,
            random_fully_disabled=self.ip_masq_fully_random_disable,
        )

    @property
    def backend_settings(self) -> dict[str, Any]:
        """This node's own settings for the backends, by flag name (each backend reads the
        ones it has: backend/registry.py's BackendContext): the options of layer "backend"."""
        return {f.name: getattr(self, f.name) for f in fields(self) if _layer(f) == "backend"}

    @property
    def can_reach_targets(self) -> list[IPv4Address | IPv6Address]:
        """--iface-can-reach: an IPv4 target, an IPv6 one (dual-stack), or both, with a comma."""
        return [ip_address(t.strip()) for t in self.iface_can_reach.split(",") if t.strip()]

    @property
    def iface_choice(self) -> IfaceChoice:
        """How the external interface is to be chosen (kernel layer)."""
        return IfaceChoice(
            iface=tuple(self.iface),
            iface_regex=tuple(self.iface_regex),
            can_reach=next((t for t in self.can_reach_targets if t.version == 4), None),
            can_reach6=next((t for t in self.can_reach_targets if t.version == 6), None),
            public_ip=IPv4Address(self.public_ip) if self.public_ip else None,
            public_ipv6=IPv6Address(self.public_ipv6) if self.public_ipv6 else None,
        )

    @property
    def status_endpoint(self) -> StatusEndpoint:
        """Where `pyflannel status` asks this network's daemon (operations layer)."""
        from pyflannel.ops.status.client import StatusEndpoint

        return StatusEndpoint(
            subnet_file=self.subnet_file,
            healthz_ip=self.healthz_ip,
            healthz_port=self.healthz_port,
            pinned=bool({"healthz_ip", "healthz_port"} & self.given),
        )

    @property
    def doctor(self) -> DoctorOptions:
        from pyflannel.ops.doctor.probes import DoctorOptions

        return DoctorOptions(
            store=self.store,
            iface=self.iface_choice,
            endpoint=self.status_endpoint,
            ip_masq=self.ip_masq,
            udp_fallback_port=self.udp_fallback_port,
        )


_KINDS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}

# (flag name, parsing kind, help), in declaration order: the parser, FLANNELD_* and
# /etc/default/pyflannel (env_doc.py) all come from here. The kind decides parsing: str, int,
# float, bool, CommaList, and list (repeatable: every occurrence adds one value).
FLAGS: list[tuple[str, type, str]] = [
    (f.name.replace("_", "-"), f.metadata["kind"] or _KINDS[str(f.type)], f.metadata["help"])
    for f in fields(Options)
    if "help" in f.metadata
]


def _layer(f: Field) -> str:
    return f.metadata.get("layer", "")


def _attr(flag: str) -> str:
    return flag.replace("-", "_")


def env_name(flag: str) -> str:
    return ENV_PREFIX + _attr(flag).upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _convert(kind: type, text: str) -> Any:
    if kind is bool:
        return _parse_bool(text)
    return kind(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    for name, kind, help_text in FLAGS:
        default = getattr(defaults, _attr(name))
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = help_text.replace("%(default)s", str(shown)) + f" [env {env_name(name)}]"
        dest = _attr(name)
        opt = "-v" if name == "v" else f"--{name}"
        extra = ["--v"] if name == "v" else []
        if kind is bool:
            parser.add_argument(
                opt,
                *extra,
                dest=dest,
                nargs="?",
                const="true",
                default=None,
                metavar="true|false",
                help=help_text,
            )
        elif kind is list:
            parser.add_argument(
                opt, *extra, dest=dest, action="append", default=None, help=help_text
            )
        else:
            parser.add_argument(opt, *extra, dest=dest, default=None, help=help_text)


def normalize_go_flags(argv: Sequence[str]) -> list[str]:
    """``-etcd-endpoints=x`` (Go flag style) -> ``--etcd-endpoints=x``."""
    known = {f"-{name}" for name, _, _ in FLAGS if len(name) > 1}
    out = []
    for arg in argv:
        head = arg.split("=", 1)[0]
        out.append("-" + arg if head in known else arg)
    return out


def build_options(ns: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Options:
    """Flags win; a flag not given is read from FLANNELD_<NAME>; else the default."""
    values: dict[str, Any] = {}
    from_env: set[str] = set()
    for name, kind, _ in FLAGS:
        dest = _attr(name)
        given = getattr(ns, dest, None)
        source = f"--{name}"
        if given is None:
            env = environ.get(env_name(name), "")
            if not env:
                continue
            given, source = ([env] if kind is list else env), env_name(name)
            from_env.add(dest)
        try:
            if isinstance(given, list):
                values[dest] = [i.strip() for i in given if i.strip()]
            elif kind is CommaList:
                values[dest] = [i.strip() for i in given.split(",") if i.strip()]
            else:
                values[dest] = _convert(kind, given)
        except ValueError as e:
            raise OptionsError(f"invalid value for {source}: {e}") from None
    options = Options(**values, given=frozenset(values), from_env=frozenset(from_env))
    validate(options)
    return options


def with_service_environment(
    environ: Mapping[str, str], path: str = SERVICE_ENV_FILE
) -> dict[str, str]:
    """``environ`` over the FLANNELD_* variables of the service's environment file, so that
    `pyflannel status` and `pyflannel doctor`, typed in a shell on a node, use the options the
    service runs with (its etcd endpoints, TLS files, prefix)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return dict(environ)
    from_file = {k: v for k, v in parse_env(text).items() if k.startswith(ENV_PREFIX)}
    return {**from_file, **environ}


def validate(options: Options) -> None:
    if not 0 < options.subnet_lease_renew_margin <= MAX_RENEW_MARGIN:
        raise OptionsError("Invalid subnet-lease-renew-margin option, out of acceptable range")
    if options.subnet_lease_ttl < 5:
        raise OptionsError("--subnet-lease-ttl must be at least 5 seconds")
    if not 0 <= options.healthz_port < 65536:
        raise OptionsError("--healthz-port must be a port number (0 turns the endpoint off)")
    if options.iptables_resync <= 0:
        raise OptionsError("--iptables-resync must be positive")
    if options.probe_interval < 0 or options.probe_rate <= 0:
        raise OptionsError("--probe-interval must be >= 0 and --probe-rate > 0")
    if options.reconcile_interval <= 0:
        raise OptionsError("--reconcile-interval must be positive")
    if options.backend_fallback not in ("auto", "udp", "off"):
        raise OptionsError(
            f"--backend-fallback must be auto, udp or off, not {options.backend_fallback!r}"
        )
    if not 0 < options.udp_fallback_port < 65536:
        raise OptionsError("--udp-fallback-port must be a port number")
    if not 0 <= options.udp_workers <= MAX_UDP_WORKERS:
        raise OptionsError(
            f"--udp-workers must be from 0 (one per core) to {MAX_UDP_WORKERS}, "
            f"not {options.udp_workers}"
        )
    if options.wireguard_datapath not in ("auto", "kernel", "userspace"):
        raise OptionsError(
            "--wireguard-datapath must be auto, kernel or userspace, "
            f"not {options.wireguard_datapath!r}"
        )
    if options.udp_datapath not in ("auto", "epoll", "threads", "asyncio", "uvloop"):
        raise OptionsError(
            "--udp-datapath must be epoll, threads, asyncio or uvloop, "
            f"not {options.udp_datapath!r}"
        )
    if options.udp_priority not in ("auto", "realtime", "normal"):
        raise OptionsError(
            f"--udp-priority must be auto, realtime or normal, not {options.udp_priority!r}"
        )
    if options.site:
        try:
            check_site_name(options.site)
        except ValueError as e:
            raise OptionsError(f"--site: {e}") from None
    if not 0 < options.site_port < 65536 or options.site_keepalive < 0:
        raise OptionsError("--site-port must be a UDP port and --site-keepalive >= 0")
    if options.public_ip:
        try:
            IPv4Address(options.public_ip)
        except ValueError:
            raise OptionsError(
                f"--public-ip {options.public_ip!r} is not an IPv4 address"
            ) from None
    if options.public_ipv6:
        try:
            IPv6Address(options.public_ipv6)
        except ValueError:
            raise OptionsError(
                f"--public-ipv6 {options.public_ipv6!r} is not an IPv6 address"
            ) from None
    if options.iface_can_reach:
        try:
            targets = options.can_reach_targets
        except ValueError:
            raise OptionsError(
                f"--iface-can-reach {options.iface_can_reach!r} is not an IP address (an IPv4 "
                "one, an IPv6 one, or one of each with a comma)"
            ) from None
        if len({t.version for t in targets}) != len(targets):
            raise OptionsError(
                f"--iface-can-reach {options.iface_can_reach!r}: one IPv4 and one IPv6 target "
                "at most"
            )
    if bool(options.etcd_certfile) != bool(options.etcd_keyfile):
        raise OptionsError("--etcd-certfile and --etcd-keyfile must be given together")
    if bool(options.etcd_username) != bool(options.etcd_password):
        raise OptionsError("--etcd-username and --etcd-password must be given together")
    if not options.etcd_endpoints:
        raise OptionsError("--etcd-endpoints is empty")
    for url in options.etcd_endpoints:
        try:
            parse_endpoint(url)
        except ValueError as e:
            raise OptionsError(f"--etcd-endpoints: {e}") from None
