"""The daemon process: missing/invalid config and unreachable etcd are explained and retried,
never a traceback; signals end it with status 0 at any stage; losing the lease moves the node
to a new subnet and rewrites subnet.env."""

import re
import signal
import subprocess
import sys
import time

import pytest

from testbed.bed import TestBed

from .conftest import FAST_RECONCILE, eventually, require_testbed


@pytest.fixture(scope="module")
def bed():
    require_testbed()
    with TestBed(hosts=2) as bed:
        yield bed


@pytest.fixture
def node(bed):
    node = bed.nodes[0]
    yield node
    node.stop()


def test_missing_then_invalid_then_valid_config(bed, node):
    bed.etcd.ctl("del", "/coreos.com/network/config")
    node.start(*FAST_RECONCILE)
    node.wait_log(r"flannel config not found in etcd store at /coreos.com/network/config")
    bed.put_config(
        '{"Network": "10.1.0.0/16", "SubnetMin": "10.1.0.5", "Backend": {"Type": "vxlan"}}'
    )
    node.wait_log(
        r"network config at /coreos.com/network/config: SubnetMin is not on a SubnetLen "
        r"boundary: 10\.1\.0\.5; retrying every 1 s"
    )
    bed.put_config()
    node.wait_ready()
    log = node.log()
    assert "Traceback" not in log
    # Retried every second, but each distinct problem is logged once, not every second.
    assert log.count("flannel config not found") == 1


def test_unreachable_etcd_is_logged_once_and_sigterm_still_exits_0(bed):
    node = bed.nodes[1]
    node.start("--etcd-endpoints=http://198.51.100.254:1")  # nothing listens there
    node.wait_log(
        r"etcd unreachable while reading the network config: etcd at "
        r"http://198\.51\.100\.254:1: .*; retrying every 1 s"
    )
    time.sleep(2.5)
    assert node.stop(signal.SIGTERM) == 0
    log = node.log()
    assert log.count("etcd unreachable") == 1
    assert "Traceback" not in log and "Exiting cleanly" in log


def test_without_udp_fallback_the_lease_is_upstreams_byte_for_byte(bed, node):
    bed.put_config()
    node.start(*FAST_RECONCILE, "--backend-fallback=off")
    node.wait_ready()
    mac = node.ip_json("link", "show", "flannel.1")[0]["address"]
    key = f"/coreos.com/network/subnets/{node.subnet.network_address}-24"
    assert bed.etcd.get(key) == (
        '{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    )


def test_sigint_exits_0_and_leaves_the_data_plane(bed, node):
    bed.put_config()
    node.start(*FAST_RECONCILE)
    node.wait_ready()
    assert node.stop(signal.SIGINT) == 0
    assert node.ip_json("route", "show", "proto", "152") is not None
    assert node.ip_json("link", "show", "flannel.1")
    assert len(bed.leases()) >= 1  # the lease stays for the restart


def test_lost_lease_moves_the_node_to_a_new_subnet_and_rewrites_subnet_env(bed, node):
    bed.put_config()
    node.start(*FAST_RECONCILE, "--subnet-lease-renew-margin=1")
    node.wait_ready()
    peer = bed.nodes[1]
    peer.start(*FAST_RECONCILE)
    peer.wait_ready()
    try:
        old = node.subnet
        key = f"/coreos.com/network/subnets/{old.network_address}-24"
        # Another node (by public IP) now holds our subnet, as if our lease had expired.
        bed.etcd.put(
            key,
            '{"PublicIP":"198.51.100.77","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}',
        )
        node.wait_log(r"LEASE LOST: " + re.escape(str(old)))
        node.wait_log(r"SUBNET CHANGED: " + re.escape(str(old)) + r" -> 10\.1\.\d+\.0/24")
        new = eventually(lambda: _moved(node, old), timeout=10)
        addrs = node.ip_json("-4", "addr", "show", "flannel.1")[0]["addr_info"]
        assert [a["local"] for a in addrs] == [str(new.network_address)]
        # The intruder's lease is untouched and is now a peer of ours.
        assert '"198.51.100.77"' in bed.etcd.get(key)
        eventually(lambda: _has_route(node, str(old)), timeout=5)
        # And the other node learns our new subnet.
        eventually(lambda: _has_route(peer, str(new)), timeout=5)
    finally:
        peer.stop()


def _moved(node, old):
    new = node.subnet
    assert new != old
    return new


def _has_route(node, dst):
    assert dst in [r["dst"] for r in node.routes()]


def test_cli_version_help_and_bad_flags():
    run = [sys.executable, "-m", "pyflannel"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\n", version.stdout)
    helptext = subprocess.run([*run, "run", "--help"], capture_output=True, text=True)
    assert helptext.returncode == 0
    for flag in (
        "--etcd-endpoints",
        "--iface",
        "--subnet-lease-renew-margin",
        "FLANNELD_ETCD_PREFIX",
    ):
        assert flag in helptext.stdout
    bad = subprocess.run(
        [*run, "run", "--subnet-lease-renew-margin=0"], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "Invalid subnet-lease-renew-margin option, out of acceptable range" in bad.stderr
    assert "Traceback" not in bad.stderr
