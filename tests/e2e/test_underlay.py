"""The underlay interface goes down and comes back, and then its address changes: the
daemon recovers by itself. On a new address it moves its tunnel endpoint (same VTEP MAC)
and re-advertises its lease with the new public IP, keeping its subnet; peers follow."""

import json
import time

import pytest

from .conftest import eventually, started_bed

ARGS = ("--reconcile-interval=30",)  # address notifications, not the periodic pass, must do it


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=2, daemon_args=ARGS)
    yield bed
    bed.close()


def test_link_down_and_up_recovers_by_itself(bed):
    a, b = bed.nodes
    a.run("ip", "link", "set", "eth0", "down")
    time.sleep(2)  # the fault lasts a while (not a wait for the daemon: it has nothing to do)
    assert a.ping(b.pod_ip, count=1, wait=0.5).received == 0
    a.run("ip", "link", "set", "eth0", "up")
    eventually(lambda: _reach(a, b) and _reach(b, a), timeout=15)
    assert a.running


def test_a_new_underlay_address_is_followed_and_advertised(bed):
    a, b = bed.nodes
    subnet = a.subnet
    key = f"/coreos.com/network/subnets/{subnet.network_address}-24"
    mac = a.ip_json("link", "show", "flannel.1")[0]["address"]
    mark = len(a.log())
    a.run("ip", "addr", "del", f"{a.underlay_ip}/24", "dev", "eth0")
    a.run("ip", "addr", "add", "198.51.100.11/24", "dev", "eth0")
    t0 = time.monotonic()
    try:
        eventually(lambda: _advertised(bed, key, "198.51.100.11"), timeout=20)
        eventually(lambda: _reach(b, a) and _reach(a, b), timeout=20)
        print(f"\nUNDERLAY address-change-to-traffic {time.monotonic() - t0:.2f}")
        assert a.subnet == subnet  # same subnet: pods keep their addresses
        assert a.ip_json("link", "show", "flannel.1")[0]["address"] == mac
        info = a.ip_json("-d", "link", "show", "flannel.1")[0]["linkinfo"]["info_data"]
        assert info["local"] == "198.51.100.11"
        assert {e["dst"] for e in b.fdb()} == {"198.51.100.11"}
        assert "UNDERLAY CHANGED" in a.log()[mark:]
    finally:
        a.run("ip", "addr", "del", "198.51.100.11/24", "dev", "eth0", check=False)
        a.run("ip", "addr", "add", f"{a.underlay_ip}/24", "dev", "eth0", check=False)
        eventually(lambda: _advertised(bed, key, str(a.underlay_ip)), timeout=20)


def _advertised(bed, key, ip):
    assert json.loads(bed.etcd.get(key))["PublicIP"] == ip


def _reach(x, y) -> bool:
    assert x.ping(y.pod_ip, count=1, wait=0.5).received == 1
    return True
