"""The extension backend: a VXLAN built from `ip` commands in the network config (upstream's
documented example, with `ip neigh` for `arp`), two pyflannel nodes and one upstream flanneld
v0.20.2 running the same commands. Every pair of pods reaches each other, the lease bytes are
upstream's, a peer's removal runs its remove command, and a failing command is reported with
its output while the daemon keeps running and retries it."""

import json

import pytest

from .conftest import FAST_RECONCILE, beside_upstream, eventually

DEV = "flannel-ext"
CONFIG = {
    "Network": "10.1.0.0/16",
    "Backend": {
        "Type": "extension",
        "MTU": 1450,  # pyflannel only (upstream's node ignores it): VXLAN's 50 bytes
        "PreStartupCommand": (
            f"ip link del {DEV} 2>/dev/null; "
            f"ip link add {DEV} type vxlan id 1 dstport 8472 nolearning && "
            f"cat /sys/class/net/{DEV}/address"
        ),
        "PostStartupCommand": (f"ip addr add ${{SUBNET%/*}}/32 dev {DEV} && ip link set {DEV} up"),
        "SubnetAddCommand": (
            "read VTEP; GW=${SUBNET%/*}; "
            f"ip route replace $SUBNET via $GW dev {DEV} onlink && "
            f"ip neigh replace $GW lladdr $VTEP dev {DEV} nud permanent && "
            f"bridge fdb replace $VTEP dev {DEV} self dst $PUBLIC_IP"
        ),
        "SubnetRemoveCommand": (
            "read VTEP; GW=${SUBNET%/*}; "
            f"ip route del $SUBNET dev {DEV}; ip neigh del $GW dev {DEV}; "
            f"bridge fdb del $VTEP dev {DEV} self"
        ),
    },
}


@pytest.fixture(scope="module")
def bed():
    yield from beside_upstream(CONFIG, (*FAST_RECONCILE, "--probe-interval=1"), pods=True)


def _mac(node) -> str:
    return node.ip_json("link", "show", DEV)[0]["address"]


def test_the_lease_is_upstreams_byte_for_byte(bed):
    leases = bed.leases()
    for node in bed.nodes:  # two pyflannel nodes, then upstream's
        value = leases[f"/coreos.com/network/subnets/{node.subnet.network_address}-24"]
        assert value == (
            f'{{"PublicIP":"{node.underlay_ip}","PublicIPv6":null,'
            f'"BackendType":"extension","BackendData":"{_mac(node)}"}}'
        ), node.ns


@pytest.mark.parametrize("src, dst", [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)])
def test_every_pair_of_pods_reaches_each_other(bed, src, dst):
    a, b = bed.nodes[src], bed.nodes[dst]
    eventually(lambda: _reaches(a, b.pod_ip), timeout=15)
    assert a.ping(b.pod_ip, count=3, interval=0.1).lost == 0


def _reaches(a, dst) -> None:
    assert a.ping(dst, count=1, wait=1).received == 1


def test_status_shows_the_commands_and_the_peers_probed(bed):
    a, b, up = bed.nodes
    doc = a.status()
    assert doc["backend"]["type"] == "extension" and doc["backend"]["failed"] == {}
    assert set(doc["backend"]["commands"]) == {
        "pre_startup",
        "post_startup",
        "subnet_add",
        "subnet_remove",
        "mtu",
    }
    assert doc["backend"]["mtu"] == 1450 and a.subnet_env()["FLANNEL_MTU"] == "1450"
    rows = {r["subnet"]: r for r in doc["peers"]}
    assert set(rows) == {str(b.subnet), str(up.subnet)}
    eventually(lambda: _all_paths_ok(a), timeout=15)


def _all_paths_ok(node) -> None:
    states = {r["subnet"]: (r["path"] or {}).get("state") for r in node.status()["peers"]}
    assert set(states.values()) == {"ok"}, states


SYNTHETIC = "10.1.240.0/24"
KEY = "/coreos.com/network/subnets/10.1.240.0-24"


def _value(mac: str) -> str:
    return json.dumps(
        {
            "PublicIP": "198.51.100.240",
            "PublicIPv6": None,
            "BackendType": "extension",
            "BackendData": mac,
        }
    )


def test_a_peers_removal_runs_its_remove_command(bed):
    """Each command is three steps (route, neighbour, FDB entry): the daemon's line saying
    the command ran is the end of all three, so each effect is looked at after it."""
    a = bed.nodes[0]
    mark = len(a.log())
    bed.etcd.put(KEY, _value("02:00:00:00:02:40"))
    a.wait_log(r"ran SubnetAddCommand for add 10\.1\.240\.0/24", after=mark)
    assert _routed(a, SYNTHETIC)
    fdb = a.run("bridge", "fdb", "show", "dev", DEV).stdout
    assert "02:00:00:00:02:40 dst 198.51.100.240" in fdb
    mark = len(a.log())
    bed.etcd.ctl("del", KEY)
    a.wait_log(r"ran SubnetRemoveCommand for remove 10\.1\.240\.0/24", after=mark)
    assert not _routed(a, SYNTHETIC)
    assert "02:00:00:00:02:40" not in a.run("bridge", "fdb", "show", "dev", DEV).stdout


def test_a_failing_command_is_reported_with_its_output_and_retried(bed):
    a = bed.nodes[0]
    mark = len(a.log())
    bed.etcd.put(KEY, _value("not-a-mac"))  # `ip neigh replace ... lladdr not-a-mac` fails
    try:
        match = a.wait_log(
            r"SubnetAddCommand for add 10\.1\.240\.0/24 failed \(exit status \d+: (.*)\)",
            after=mark,
        )
        assert "lladdr" in match.group(1) or "invalid" in match.group(1).lower(), match.group(0)
        failed = a.status()["backend"]["failed"]
        assert "add 10.1.240.0/24" in failed and "exit status" in failed["add 10.1.240.0/24"]
        passes = a.status()["backend"]["reconcile_passes"]
        eventually(lambda: _assert(a.status()["backend"]["reconcile_passes"] > passes + 1))
        assert a.running and a.ping(bed.nodes[1].pod_ip, count=2, interval=0.1).lost == 0
        # the peer mended: the retry succeeds and the failure is gone
        bed.etcd.put(KEY, _value("02:00:00:00:02:41"))
        eventually(lambda: _assert(a.status()["backend"]["failed"] == {}), timeout=10)
    finally:
        bed.etcd.ctl("del", KEY)
    eventually(lambda: _assert(not _routed(a, SYNTHETIC)), timeout=10)


def _routed(node, subnet: str) -> bool:
    """Routed by the commands (not pyflannel's: no proto 152)."""
    return subnet in {r["dst"] for r in node.ip_json("route", "show", "dev", DEV)}


def _assert(condition) -> None:
    assert condition
