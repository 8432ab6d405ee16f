"""How fast a daemon is back in sync with etcd after etcd trouble (used by bench/upstream.py,
which runs each against pyflannel and upstream flanneld on the same bed):

- ``etcd_away``: etcd frozen (SIGSTOP: connections stay up, nothing answers) for half the
  time, then killed and kept down for the other half, then restarted on its data; a lease
  written the moment etcd is healthy again: ms until the node's route for it. Also the
  daemon's CPU while etcd was away (a reconnect loop must not spin).
- ``member_cut_off``: on a 3-member etcd, the member the node uses (a follower, so the rest
  keep their leader and commit at once) loses its Raft peers (its port 2380 dropped) but
  still answers clients; a lease written right after through the others: ms from the cut
  until the node's route for it.
"""

from __future__ import annotations

import json
import time

from bench.common import cpu_seconds
from testbed import netns
from testbed.bed import Node, TestBed
from testbed.etcd import EtcdServer

SUBNET = "10.0.240.0/26"
KEY = "/coreos.com/network/subnets/10.0.240.0-26"
VALUE = json.dumps(
    {
        "PublicIP": "198.18.9.9",
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "02:cc:00:00:09:09"},
    }
)


def routed_within(node: Node, has_route, t0: float, limit: float = 60) -> float:
    """ms from ``t0`` until the node routes SUBNET (NaN: not within ``limit`` s, or the daemon
    died: v0.20.2 can panic when its watch breaks)."""
    while not has_route(node, SUBNET):
        if time.monotonic() - t0 > limit or not node.running:
            return float("nan")
        time.sleep(0.002)
    return (time.monotonic() - t0) * 1000


def etcd_away(bed: TestBed, node: Node, seconds: float, has_route) -> tuple[float, float]:
    """(ms from etcd healthy again to the route of a lease written then, daemon CPU % while
    etcd was away)."""
    etcd = bed.etcd
    assert isinstance(etcd, EtcdServer)
    pid = node.pid
    c0, w0 = cpu_seconds(pid), time.monotonic()
    etcd.pause()
    time.sleep(seconds / 2)
    etcd.kill()
    time.sleep(seconds / 2)
    cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
    etcd.start()  # returns once etcd answers
    t0 = time.monotonic()
    etcd.put(KEY, VALUE)
    elapsed = routed_within(node, has_route, t0)
    etcd.ctl("del", KEY)
    return elapsed, cpu


def followers_first(bed: TestBed) -> str:
    """The cluster's endpoints, a follower first: the member a node starting now will use."""
    leader = bed.etcd.leader()
    members = [m for m in bed.etcd.members if m is not leader] + [leader]
    return ",".join(m.url for m in members)


def member_cut_off(bed: TestBed, node: Node, member: EtcdServer, has_route) -> float:
    """ms from cutting ``member`` (the node's, a follower) off its Raft peers to the route of
    a lease written right after through the other members."""
    others = [m for m in bed.etcd.members if m is not member]
    cut = [
        ["iptables", "-A", chain, "-p", "tcp", port, "2380", "-j", "DROP"]
        for chain in ("INPUT", "OUTPUT")
        for port in ("--dport", "--sport")
    ]
    t0 = time.monotonic()
    for rule in cut:
        netns.run(rule, ns=member.netns)
    try:
        bed.etcd.put(KEY, VALUE, members=others)
        return routed_within(node, has_route, t0)
    finally:
        netns.run(["iptables", "-F"], ns=member.netns)
        bed.etcd.ctl("del", KEY, members=others)
        member.wait_healthy(30)
        wait_for_a_leader(bed)


def wait_for_a_leader(bed: TestBed, timeout: float = 30) -> None:
    """The healed member rejoins with a higher term (etcd 3.4: no pre-vote) and forces an
    election: wait until every member agrees on a leader again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = bed.etcd.ctl("endpoint", "status", "-w", "json", check=False).stdout
        try:
            leaders = {s["Status"]["leader"] for s in json.loads(out)}
        except (ValueError, KeyError):
            leaders = set()
        if len(leaders) == 1 and 0 not in leaders:
            return
        time.sleep(0.2)
    raise TimeoutError("the etcd cluster did not settle on a leader")
