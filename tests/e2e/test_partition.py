"""A node cut off from etcd (its traffic to etcd dropped inside its namespace; the data plane
between nodes untouched) for longer than its lease TTL, while the lease history is compacted
and another node takes its subnet. When the cut heals, the node re-lists (the history it
needs is gone), notices it lost its subnet, takes a new one without touching the other
node's lease, rewrites subnet.env and says so loudly. Timings: ``PARTITION <what> <s>``."""

import json
import time

import pytest

from testbed import netns

from .conftest import require_testbed, started_bed

TTL = 10
ARGS = ("--reconcile-interval=5", f"--subnet-lease-ttl={TTL}")
INTRUDER = (
    '{"PublicIP":"198.51.100.77","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}'
)
OTHER_PEER = (
    '{"PublicIP":"198.51.100.66","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}}'
)


@pytest.fixture(scope="module")
def bed():
    require_testbed()
    bed = started_bed(hosts=2, daemon_args=ARGS)
    yield bed
    bed.close()


def cut_from_etcd(node, on: bool) -> None:
    action = "-A" if on else "-D"
    for chain, direction in (("OUTPUT", "--dport"), ("INPUT", "--sport")):
        netns.run(
            ["iptables", action, chain, "-p", "tcp", direction, "2379", "-j", "DROP"], ns=node.ns
        )


def test_a_node_partitioned_past_its_lease_moves_and_never_fights(bed):
    a, b = bed.nodes
    old = a.subnet
    key = f"/coreos.com/network/subnets/{old.network_address}-24"
    b_lease = bed.etcd.get(f"/coreos.com/network/subnets/{b.subnet.network_address}-24")
    mark = len(a.log())
    cut_from_etcd(a, True)
    try:
        # Cut off, but within its lease: the overlay does not care.
        assert a.ping(b.pod_ip, count=2, interval=0.1).received == 2
        # While a is away: a new peer appears, the history is compacted, a's lease expires
        # and another node takes its subnet.
        bed.etcd.put("/coreos.com/network/subnets/10.1.241.0-24", OTHER_PEER)
        deadline = time.monotonic() + TTL + 10
        while bed.etcd.get(key) is not None:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.2)
        bed.etcd.put(key, INTRUDER)
        status = json.loads(bed.etcd.ctl("endpoint", "status", "-w", "json").stdout)
        bed.etcd.ctl("compact", str(status[0]["Status"]["header"]["revision"]))
    finally:
        cut_from_etcd(a, False)
    healed = time.monotonic()
    a.wait_log(r"SUBNET CHANGED: " + str(old).replace(".", r"\.") + r" -> ", timeout=60, after=mark)
    print(f"\nPARTITION notice-and-move {time.monotonic() - healed:.2f}")
    t0 = time.monotonic()
    while (new := a.subnet) == old:  # subnet.env is rewritten right after the log line
        assert time.monotonic() - t0 < 5
        time.sleep(0.05)
    assert bed.etcd.get(key) == INTRUDER  # never fought over
    assert bed.etcd.get(f"/coreos.com/network/subnets/{b.subnet.network_address}-24") == b_lease
    assert "LEASE LOST" in a.log()[mark:]
    # Its watch resumes from before the cut: that history is compacted, so it re-lists.
    a.wait_log(r"re-listing all leases", timeout=40, after=mark)
    assert f"peer {old} at 198.51.100.1" not in a.log()[mark:]  # never its own old lease
    # a learned what happened while it was away, and b learned a's new subnet.
    t0 = time.monotonic()
    while not (
        "10.1.241.0/24" in [r["dst"] for r in a.routes()]
        and str(new) in [r["dst"] for r in b.routes()]
    ):
        assert time.monotonic() - t0 < 20
        time.sleep(0.1)
    print(f"\nPARTITION converged {time.monotonic() - healed:.2f}")
    assert str(old) in [r["dst"] for r in a.routes()]  # the intruder's subnet is now a peer
    a.add_pod()  # pods are recreated on the new subnet ...
    assert b.ping(a.pod_ip, count=2, interval=0.1).received == 2  # ... and reachable
