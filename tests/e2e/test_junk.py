"""Junk in etcd, written under real daemons: invalid JSON, wrong types, keys that almost
parse, a subnet outside the network, a lease over a node's own subnet with a broken value,
a huge value, a lease without BackendType. No crash, no route outside the network, no peer
lost, and a warning naming each key."""

import json

import pytest

from .conftest import eventually, started_bed

P = "/coreos.com/network/subnets/"


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=2, daemon_args=("--reconcile-interval=2",))
    yield bed
    bed.close()


def test_junk_is_skipped_with_warnings_and_loses_nothing(bed):
    a, b = bed.nodes
    own_key = f"{P}{a.subnet.network_address}-24"
    own_value = bed.etcd.get(own_key)
    junk = {
        f"{P}10.1.200.0-24": "{not json",
        f"{P}10.1.201.0-24": json.dumps({"PublicIP": 17, "BackendType": "vxlan"}),
        f"{P}10.1.202.0-24": json.dumps(
            {"PublicIP": "198.51.100.9", "BackendType": "vxlan", "BackendData": "x"}
        ),
        f"{P}10.1.203.0-24": json.dumps(
            {
                "PublicIP": "198.51.100.9",
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "zz:zz"},
            }
        ),
        f"{P}10.1.204.0-24": json.dumps({"PublicIP": "198.51.100.9"}),  # no BackendType in vxlan
        f"{P}10.1.205.0-24x": "{}",
        f"{P}10.1.2.0-33": "{}",
        f"{P}10.01.206.0-24": "{}",
        f"{P}10.2.0.0-24": json.dumps(
            {
                "PublicIP": "198.51.100.9",
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:09"},
            }
        ),
        f"{P}10.1.207.0-24": json.dumps(
            {
                "PublicIP": "198.51.100.9",
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:09"},
                "Padding": "x" * 1_000_000,
            }
        ),  # a huge value, otherwise valid
    }
    mark = len(a.log())
    for key, value in junk.items():
        bed.etcd.put(key, value)
    bed.etcd.put(own_key, "{broken")  # junk over this node's own lease
    try:
        eventually(lambda: _programmed(a, "10.1.207.0/24"), timeout=15)  # the valid huge one
        assert a.running and b.running
        dsts = [r["dst"] for r in a.routes()]
        assert all(d.startswith("10.1.") for d in dsts), dsts  # nothing outside the network
        assert set(dsts) == {str(b.subnet), "10.1.207.0/24"}  # b kept; only the valid lease added
        log = a.log()[mark:]
        for key in (
            "10.1.200.0",
            "10.1.201.0",
            "10.1.202.0",
            "10.1.203.0",
            "10.1.204.0",
            "10.2.0.0",
        ):
            assert f"{key}-24" in log or f"{key}/24" in log, key  # named in a warning
        assert "Traceback" not in log
        # Junk over our own key is nobody's claim: the lease is restored, the node stays put.
        assert "an undecodable value was written over this node's lease" in log
        eventually(lambda: _restored(bed, own_key, own_value), timeout=10)
        assert f"{a.subnet.network_address}-24" == own_key.rsplit("/", 1)[1]
        assert a.ping(b.pod_ip, count=2, interval=0.1).received == 2
    finally:
        for key in junk:
            bed.etcd.ctl("del", key)


def _restored(bed, key, value):
    assert bed.etcd.get(key) == value


def _programmed(node, subnet):
    assert subnet in [r["dst"] for r in node.routes()]
