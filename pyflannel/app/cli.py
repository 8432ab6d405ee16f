"""The ``pyflannel`` command line. Thin: parsing here, behaviour in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyflannel import __version__
from pyflannel.app.options import (
    Options,
    add_arguments,
    build_options,
    normalize_go_flags,
    with_service_environment,
)
from pyflannel.errors import OptionsError
from pyflannel.log import setup_logging

if TYPE_CHECKING:
    from ipaddress import IPv4Address

    from pyflannel.ops.status.client import StatusEndpoint
    from pyflannel.subnet.stores import StoreOptions

log = logging.getLogger("pyflannel")


@functools.cache
def _help_formatter() -> functools.partial[argparse.HelpFormatter]:
    """argparse's own formatter, for the terminal's width read once: argparse makes a formatter
    on every ``add_argument`` and each reads the width anew (~150 flags: ~3 ms of each start)."""
    return functools.partial(argparse.HelpFormatter, width=shutil.get_terminal_size().columns - 2)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _help_formatter())
        super().__init__(*args, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyflannel",
        description="Pure-Python overlay network daemon, compatible with flannel.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the daemon on this node",
        description=(
            "Lease a subnet from etcd, set up the overlay device and program every peer. "
            "Every flag can also be given as a FLANNELD_<NAME> environment variable; "
            "a flag on the command line wins."
        ),
    )
    add_arguments(run)
    status = commands.add_parser(
        "status",
        help="is this node's overlay healthy? (exit 0 healthy, 1 unhealthy, 2 degraded)",
        description=(
            "Ask the running daemon (its --healthz-ip/--healthz-port endpoint) for its state; "
            "if it does not answer, read subnet.env, the kernel and etcd directly. Takes the "
            "same flags and FLANNELD_* variables as `run`, and for what neither sets, those of "
            "the service's /etc/default/pyflannel."
        ),
    )
    add_arguments(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument("--cluster", action="store_true", help="list every lease in etcd instead")
    doctor = commands.add_parser(
        "doctor",
        help="preflight checks for this node (exit 0 pass, 1 fail, 2 warnings)",
        description="Can this node run pyflannel? Tries VXLAN and TUN devices in a throwaway "
        "namespace, looks for container-VPS markers, checks iptables, the interface MTU, etcd "
        "(round trips, its disk-sync times), UDP ports 8472/8285 and the clock. Takes the same "
        "flags and FLANNELD_* variables as `run`, and for what neither sets, those of the "
        "service's /etc/default/pyflannel.",
    )
    add_arguments(doctor)
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.add_argument(
        "--probe",
        nargs="?",
        const="all",
        metavar="PEER",
        help="probe the paths to every peer (or one, by subnet or public IP) through the "
        "overlay, as the daemon's mesh prober does: small, full-size and TCP",
    )
    for command in (status, doctor):
        command.add_argument(
            "--etcd-heartbeat-interval",
            type=float,
            default=100,
            metavar="MS",
            help="the --heartbeat-interval etcd's members run with, to judge the round trips "
            "between them against (default 100, etcd's own)",
        )
        command.add_argument(
            "--etcd-election-timeout",
            type=float,
            default=1000,
            metavar="MS",
            help="the --election-timeout etcd's members run with (default 1000, etcd's own)",
        )
    trace = commands.add_parser(
        "trace",
        help="the path between two overlay addresses, checked place by place (exit 0 ok, 1 broken)",
        description="Which node holds SRC's and DST's subnets (etcd), the route, neighbour and "
        "FDB entries on this node (or, when SRC is on another node, the path state that node "
        "publishes), the rules, the underlay and the encapsulation, then active probes "
        "(don't-fragment at the pod MTU, TCP): the verdict and the first place the path "
        "fails. SRC and DST are pod or node addresses. Takes the same flags and FLANNELD_* "
        "variables as `run`.",
    )
    add_arguments(trace)
    trace.add_argument("src", metavar="SRC", help="source: a pod or node address")
    trace.add_argument("dst", metavar="DST", help="destination: a pod or node address")
    trace.add_argument("--json", action="store_true", help="print the trace as JSON")
    opts = commands.add_parser(
        "docker-opts",
        help="Docker options from subnet.env (upstream's mk-docker-opts.sh)",
        description="Write Docker's --bip, --mtu and --ip-masq options derived from subnet.env. "
        "With neither -i nor -c, both kinds of line are written.",
    )
    opts.add_argument(
        "-f",
        dest="subnet_file",
        default="/run/flannel/subnet.env",
        help="the subnet file (default %(default)s)",
    )
    opts.add_argument(
        "-d",
        dest="output",
        default="/run/docker_opts.env",
        help="where to write the options (default %(default)s; - for stdout)",
    )
    opts.add_argument(
        "-i", dest="individual", action="store_true", help="one DOCKER_OPT_* per option"
    )
    opts.add_argument("-c", dest="combined", action="store_true", help="one combined line")
    opts.add_argument("-k", dest="key", default="DOCKER_OPTS", help="name of the combined variable")
    opts.add_argument("-m", dest="omit_ipmasq", action="store_true", help="leave out --ip-masq")
    cni = commands.add_parser(
        "install-cni",
        help="install the flannel CNI plugin (and a network config) for a container runtime",
        description="Write an executable `flannel` CNI plugin (running with this pyflannel's "
        "Python) into the runtime's plugin directory, and with --conf-dir upstream's default "
        "network config (cbr0: flannel, then portmap) unless 10-flannel.conflist exists.",
    )
    cni.add_argument("--bin-dir", default="/opt/cni/bin", help="plugin directory (%(default)s)")
    cni.add_argument(
        "--conf-dir", default=None, help="network config directory (e.g. /etc/cni/net.d)"
    )
    commands.add_parser("version", help="print the version and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args = parser.parse_args(normalize_go_flags(argv))
    if args.version or args.command == "version":
        print(__version__)
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "docker-opts":
        return _docker_opts(args)
    if args.command == "trace":
        return _trace(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "install-cni":
        from pyflannel.cni.install import install

        for line in install(args.bin_dir, args.conf_dir):
            print(f"installed {line}" if not line.startswith("kept") else line)
        return 0
    parser.print_help()
    return 2


def _run(args: argparse.Namespace) -> int:
    try:
        options = build_options(args)
    except OptionsError as e:
        setup_logging()
        log.error("%s", e)
        return 1
    setup_logging(options.v)
    from pyflannel.app import timeline
    from pyflannel.app.daemon import serve  # keeps `pyflannel --help` fast

    timeline.step("imports")
    return asyncio.run(serve(options))


def _status(args: argparse.Namespace) -> int:
    import json

    from pyflannel.errors import FlannelError
    from pyflannel.ops.status.client import daemon_document
    from pyflannel.ops.status.offline import cluster_leases, offline_status
    from pyflannel.ops.status.report import UNHEALTHY, exit_code, render, render_cluster

    try:
        options = build_options(args, with_service_environment(os.environ))
    except OptionsError as e:
        print(f"pyflannel status: {e}", file=sys.stderr)
        return UNHEALTHY
    if args.cluster:
        try:
            rows = asyncio.run(cluster_leases(options.store))
        except FlannelError as e:
            print(f"pyflannel status --cluster: {e}", file=sys.stderr)
            return UNHEALTHY
        print(
            json.dumps(rows, indent=1) if args.json else render_cluster(rows),
            end="" if not args.json else "\n",
        )
        return 0
    doc, why = daemon_document(options.status_endpoint)
    if doc is None:
        doc = asyncio.run(offline_status(options.store, options.subnet_file, why))
    tuning = _etcd_tuning(args)
    print(
        json.dumps({**doc.to_json(), "etcd_tuning": tuning}, indent=1)
        if args.json
        else render(doc, tuning),
        end="" if not args.json else "\n",
    )
    return exit_code(doc)


def _trace(args: argparse.Namespace) -> int:
    import json
    from ipaddress import IPv4Address

    from pyflannel.errors import FlannelError
    from pyflannel.ops.trace.gather import trace
    from pyflannel.ops.trace.model import render

    try:
        options = build_options(args, with_service_environment(os.environ))
        src, dst = IPv4Address(args.src), IPv4Address(args.dst)
        store, endpoint = _beside_the_daemon(options, (src, dst))
    except (OptionsError, ValueError, FlannelError) as e:
        print(f"pyflannel trace: {e}", file=sys.stderr)
        return 2
    result = asyncio.run(trace(src, dst, store, endpoint))
    if args.json:
        print(json.dumps(result.document(), indent=1))
    else:
        print(render(result), end="")
    return 1 if result.failure else 0


def _beside_the_daemon(
    options: Options, addresses: Sequence[IPv4Address] = ()
) -> tuple[StoreOptions, StatusEndpoint]:
    """(store options, status endpoint): those given, or, when no store flag was given (nor
    FLANNELD_* for one), the running daemon's own (ops/daemon_settings.py)."""
    if options.store_given:
        return options.store, options.status_endpoint
    from pyflannel.ops.daemon_settings import daemon_settings

    prefix = options.etcd_prefix if "etcd_prefix" in options.given else None
    found = daemon_settings(options.status_endpoint, prefix, addresses)
    if found is None:
        return options.store, options.status_endpoint
    return found.store, found.endpoint


def _etcd_tuning(args: argparse.Namespace) -> dict:
    """What status and doctor judge the etcd round trips against."""
    return {"heartbeat_ms": args.etcd_heartbeat_interval, "election_ms": args.etcd_election_timeout}


def _docker_opts(args: argparse.Namespace) -> int:
    from ipaddress import ip_interface
    from pathlib import Path

    from pyflannel.ops.docker_opts import DockerOptsError, docker_options
    from pyflannel.subnet.env_file import parse_env, write_atomic

    try:
        env = parse_env(Path(args.subnet_file).read_text())
        text = docker_options(
            env,
            individual=args.individual,
            combined=args.combined,
            key=args.key,
            existing=os.environ.get(args.key, ""),
            omit_ipmasq=args.omit_ipmasq,
        )
    except (OSError, DockerOptsError) as e:
        print(f"pyflannel docker-opts: {e}", file=sys.stderr)
        return 1
    subnet = ip_interface(env["FLANNEL_SUBNET"]).network
    if _routed_via_gateway(subnet):  # as upstream: the subnet must not already be routed elsewhere
        print(f"Your routing table already contains the subnet: {subnet}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_atomic(args.output, text)
    return 0


def _routed_via_gateway(subnet) -> bool:
    from pyflannel.kernel.iproute import IPRoute

    with IPRoute() as ipr:
        return any(
            r.get_attr("RTA_GATEWAY")
            and r["dst_len"] == subnet.prefixlen
            and r.get_attr("RTA_DST") == subnet.network_address
            for r in ipr.route("dump", family=2, table=254)
        )


def _doctor(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pyflannel.errors import FlannelError
    from pyflannel.ops.doctor.checks import exit_code, render
    from pyflannel.ops.doctor.probes import run_checks

    try:
        options = build_options(args, with_service_environment(os.environ))
        store, endpoint = _beside_the_daemon(options)
    except (OptionsError, FlannelError) as e:
        print(f"pyflannel doctor: {e}", file=sys.stderr)
        return 1
    doctor = dataclasses.replace(options.doctor, store=store, endpoint=endpoint)
    if args.probe:
        from pyflannel.ops.doctor.mesh import probe_paths
        from pyflannel.ops.status.client import daemon_document

        doc, why = daemon_document(endpoint)
        if doc is None:
            print(f"pyflannel doctor --probe: the daemon does not answer ({why})", file=sys.stderr)
            return 1
        findings = asyncio.run(probe_paths(doc, args.probe))
    else:
        findings = asyncio.run(run_checks(doctor, _etcd_tuning(args)))
    if args.json:
        print(json.dumps([dataclasses.asdict(f) for f in findings], indent=1))
    else:
        print(render(findings), end="")
    return exit_code(findings)
