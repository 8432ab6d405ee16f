"""Faults an operator meets in the first week, on real daemons: two nodes with one public IP,
-v flooding the log with library debug, missing privileges, a config changed under running
nodes. (Two networks on one host: test_two_networks.py.)"""

import json
import pkgutil
import re
import time

import pytest

import pyflannel

from .conftest import FAST_RECONCILE, eventually, started_bed

SHARED_IP = "198.51.100.1"  # h1's address, given to h3 as well: a cloned VM


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=3)
    yield bed
    bed.close()


def test_a_second_node_with_the_same_public_ip_refuses_to_share_the_subnet(bed):
    a, _, c = bed.nodes
    before = bed.leases()
    c.stop()
    c.start(*FAST_RECONCILE, f"--public-ip={SHARED_IP}")
    assert c.proc.wait(30) == 1
    mac = a.ip_json("link", "show", "flannel.1")[0]["address"]
    log = c.log()
    assert f"PUBLIC IP CONFLICT: public IP {SHARED_IP} is already advertised by lease" in log
    assert f"VTEP MAC {mac}" in log and "--public-ip or --iface" in log
    assert "Traceback" not in log
    after = bed.leases()
    assert {k: v for k, v in after.items() if SHARED_IP in v} == {
        k: v for k, v in before.items() if SHARED_IP in v
    }  # the first node's lease is untouched, and no second one exists
    assert a.running and a.ping(bed.nodes[1].pod_ip, count=2).lost == 0
    c.start(*FAST_RECONCILE)  # back to its own address: fine again
    c.wait_ready()


def test_v_10_does_not_flood_the_log_with_library_debug(bed):
    b = bed.nodes[1]
    b.stop()
    start = len(b.log())
    b.start(*FAST_RECONCILE, "-v", "10")
    b.wait_ready()
    time.sleep(3)  # a few reconcile passes
    new = b.log()[start:]
    # the log names a record's logger by its last part: pyflannel's are its modules' names
    ours = {
        m.name.rpartition(".")[2] for m in pkgutil.walk_packages(pyflannel.__path__, "pyflannel.")
    }
    debug = set(re.findall(r" DEBUG   (\S+): ", new))
    assert debug, "pyflannel's own debug is on"
    assert debug <= ours | {"pyflannel", "__main__"}, debug - ours  # no library's debug
    assert len(new) < 200_000, f"{len(new)} bytes of log in a few seconds"
    b.stop()
    b.start(*FAST_RECONCILE)
    b.wait_ready()


def test_without_cap_net_admin_one_clear_error_not_a_fallback(bed):
    c = bed.nodes[2]
    proc = c.run(
        "setpriv",
        "--bounding-set",
        "-net_admin",
        "--",
        *c.daemon_command("--healthz-port=0", f"--subnet-file={c.dir}/nocap.env"),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "lacks CAP_NET_ADMIN" in proc.stderr and "AmbientCapabilities" in proc.stderr
    assert "FALLBACK" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_changed_network_config_is_logged_once_and_shown_until_restart(bed):
    a = bed.nodes[0]
    mark = len(a.log())
    changed = {"Network": "10.9.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
    bed.put_config(changed)
    try:
        a.wait_log(
            r"network config at /coreos.com/network/config changed: Network "
            r"10\.1\.0\.0/16 -> 10\.9\.0\.0/16",
            after=mark,
        )
        time.sleep(5)  # two more checks: still one line
        assert a.log()[mark:].count("network config at /coreos.com/network/config changed") == 1
        proc = a.status_cli("--json")
        doc = json.loads(proc.stdout)
        assert doc["config_change"] == "Network 10.1.0.0/16 -> 10.9.0.0/16"
        text = a.status_cli().stdout
        assert "restart the daemon to apply it" in text
    finally:
        bed.put_config(None)
    a.wait_log("is again the one this daemon runs with", after=mark)
    assert a.status()["config_change"] == ""


def test_a_node_whose_lease_is_rewritten_by_a_clone_stops_loudly(bed):
    """What upstream flanneld on a clone with the same public IP does: it rewrites the lease
    of "its" IP with its own VTEP MAC. The first node must not go on as a second owner."""
    a = bed.nodes[0]
    key = f"/coreos.com/network/subnets/{a.subnet.network_address}-24"
    clone = {
        "PublicIP": SHARED_IP,
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "0e:c1:0e:c1:0e:c1"},
    }
    lease_id = bed.etcd.ctl("lease", "grant", "600").stdout.split()[1]
    bed.etcd.ctl("put", f"--lease={lease_id}", key, json.dumps(clone, separators=(",", ":")))
    eventually(lambda: _exited(a), timeout=15)
    assert a.proc.returncode == 1
    log = a.log()
    assert "PUBLIC IP CONFLICT" in log and "rewritten by another node" in log
    assert "0e:c1:0e:c1:0e:c1" in log and "--public-ip or --iface" in log
    assert "re-acquiring" not in log[log.index("PUBLIC IP CONFLICT") :]  # no fight


def _exited(node):
    assert not node.running
