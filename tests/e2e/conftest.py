"""End-to-end fixtures: a namespace test bed with real etcd and real daemons, one per module."""

import shutil

from testbed.bed import TestBed
from tests.conftest import require, require_etcd, require_root

FAST_RECONCILE = ("--reconcile-interval=2",)


def require_testbed() -> None:
    require_root()
    require_etcd()
    for tool in ("ip", "bridge", "ping"):
        require(
            shutil.which(tool) is not None,
            f"the {tool} command (apt install iproute2 iputils-ping)",
        )


def require_wireguard_go(nat: bool = False) -> None:
    """The bed, and what userspace WireGuard needs on it (``nat``: the NAT routers too)."""
    import shutil

    require_testbed()
    tools = ("wireguard-go", "wg", "nsenter", "unshare") + (
        ("iptables", "conntrack") if nat else ()
    )
    for tool in tools:
        require(
            shutil.which(tool) is not None,
            f"{tool} (apt install wireguard-go wireguard-tools util-linux iptables conntrack)",
        )


def require_upstream() -> None:
    """The bed and upstream flanneld v0.20.2, built from its source (../shared/anchors)."""
    from testbed.upstream import upstream_flanneld

    require_testbed()
    require(
        upstream_flanneld() is not None, "upstream flanneld (../shared/anchors/flanneld-v0.20.2)"
    )


def beside_upstream(config: dict, daemon_args: tuple[str, ...], pods: bool = False):
    """A module's bed of three hosts on one network: pyflannel on the first two, upstream
    flanneld v0.20.2 on the third (a pod behind each with ``pods``). A generator for a
    fixture to ``yield from``."""
    from testbed.bed import TestBed
    from testbed.upstream import start_upstream

    require_upstream()
    with TestBed(hosts=3) as bed:
        bed.put_config(config)
        for node in bed.nodes[:2]:
            node.start(*daemon_args)
        for node in bed.nodes[:2]:
            node.wait_ready()
        start_upstream(bed.nodes[2])
        for node in bed.nodes if pods else ():
            node.add_pod()
        yield bed


def start_nodes(
    nodes, daemon_args=FAST_RECONCILE, pods: bool = True, env=None, private_run: bool = False
) -> None:
    """Start the nodes' daemons, wait until each is ready, and put a pod behind each (with
    ``pods``). ``private_run``: each daemon in a mount namespace of its own (wireguard-go)."""
    for node in nodes:
        node.start(*daemon_args, env=env, private_run=private_run)
    for node in nodes:
        node.wait_ready()
        if pods:
            node.add_pod()


def started_bed(
    hosts: int = 3,
    mtu: int = 1500,
    config=None,
    daemon_args=FAST_RECONCILE,
    env: dict[str, str] | None = None,
    pods: bool = True,
) -> TestBed:
    """A bed with daemons running on every node (``env``: more of their environment) and,
    with ``pods``, a pod behind each. The caller closes it."""
    require_testbed()
    bed = TestBed(hosts=hosts, mtu=mtu)
    bed.__enter__()
    try:
        bed.put_config(config)
        start_nodes(bed.nodes, daemon_args, pods, env)
    except BaseException:
        bed.close()
        raise
    return bed


def rules_bed(mode: str, daemon_args: tuple[str, ...]) -> TestBed:
    """Two nodes with pods on a vxlan network whose rules are in ``mode`` ("iptables", or
    "nftables": EnableNFTables), ``bed.mode`` saying which. The caller closes it."""
    if mode == "nftables":
        require(shutil.which("nft") is not None, "the nft command (apt install nftables)")
    config = {
        "Network": "10.1.0.0/16",
        "SubnetLen": 24,
        "Backend": {"Type": "vxlan", "VNI": 1},
        "EnableNFTables": mode == "nftables",
    }
    bed = started_bed(hosts=2, config=config, daemon_args=daemon_args)
    bed.mode = mode  # type: ignore[attr-defined]
    return bed


# A peer lease for a node that does not exist (tests write it and watch it be programmed).
PEER_VALUE = (
    '{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}'
)


def renewals(node) -> int:
    return node.status()["lease"]["renewals"]


def eventually(check, timeout: float = 10.0, interval: float = 0.1):
    """Call ``check`` until it stops raising AssertionError (or time runs out); its result."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
