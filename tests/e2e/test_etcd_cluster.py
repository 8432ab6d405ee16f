"""etcd as a real 3-member Raft cluster, one member per namespace, over TLS as etcd's own
guide deploys it (--client-cert-auth, server certificates for server authentication only):
kill the member a daemon talks to, cut a member off from its peers while a daemon watches through it, stop and restart
the leader. Each time the daemon moves to a healthy member, programs a lease written
meanwhile, keeps its own lease and renews it; a continuous overlay ping loses nothing.
Seconds until the daemon is back in sync are printed as ``SYNC <fault> <seconds>``."""

import time

import pytest

from testbed import netns
from testbed.bed import TestBed, member_ips
from testbed.certs import make_certs

from .conftest import PEER_VALUE, eventually, renewals, require_testbed

# A short lease TTL makes renewals happen every few seconds (every 8 s), so the tests can
# watch them.
ARGS = ("--reconcile-interval=5", "--subnet-lease-ttl=24")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    require_testbed()
    certs = make_certs(tmp_path_factory.mktemp("etcd-certs"), server_ips=member_ips(3))
    with TestBed(hosts=2, etcd_members=3, etcd_certs=certs) as bed:
        assert all(m.url.startswith("https://") for m in bed.etcd.members)
        bed.put_config()
        for node in bed.nodes:
            node.start(*ARGS)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


def connected_member(bed, node):
    return bed.etcd.member_for(node.status()["etcd"]["current"])


def time_to_program(bed, node, subnet: str, t0: float, timeout: float = 60, through=None) -> float:
    """Write a peer lease for ``subnet`` through the cluster (or the members ``through``);
    seconds from ``t0`` until ``node`` has its route."""
    key = f"/coreos.com/network/subnets/{subnet.replace('/', '-')}"
    bed.etcd.put(key, PEER_VALUE, members=through)
    deadline = time.monotonic() + timeout
    while not node.has_route(subnet):
        assert time.monotonic() < deadline, f"{subnet} never programmed:\n{node.log()[-3000:]}"
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    bed.etcd.ctl("del", key, members=through)
    return elapsed


@pytest.fixture
def overlay_ping(bed):
    """A continuous ping between the two nodes' pods for the length of the test: none lost."""
    a, b = bed.nodes
    ping = b.start_ping(a.pod_ip, interval=0.05)
    yield
    result = b.finish_ping(ping, interrupt=True)
    assert result.sent > 20 and result.lost == 0, result.output[-400:]


def assert_lease_kept(bed, node, subnet) -> None:
    before = renewals(node)
    eventually(lambda: _renewed_since(node, before), timeout=20)
    assert node.subnet == subnet and node.status()["lease"]["subnet"] == str(subnet)


def _renewed_since(node, before):
    assert renewals(node) > before


def test_status_shows_the_member_in_use_and_the_leader(bed):
    doc = bed.nodes[0].status()
    members = doc["etcd"]["members"]
    assert sorted(m["name"] for m in members) == ["e1", "e2", "e3"]
    assert sum(m["leader"] for m in members) == 1
    assert doc["etcd"]["current"] in bed.etcd.url.split(",")


def test_killing_the_member_in_use(bed, overlay_ping):
    a, b = bed.nodes
    subnet = a.subnet
    member = connected_member(bed, a)
    t0 = time.monotonic()
    member.kill()
    try:
        seconds = time_to_program(bed, a, "10.1.201.0/24", t0)
        print(f"\nSYNC member-killed {seconds:.2f}")
        assert connected_member(bed, a) is not member
        assert a.has_route(str(b.subnet))  # no peer lost
        assert_lease_kept(bed, a, subnet)
    finally:
        member.start()


def test_a_member_cut_off_from_its_peers(bed, overlay_ping):
    a, b = bed.nodes
    subnet = a.subnet
    member = connected_member(bed, a)
    cut = [
        ["iptables", "-A", chain, "-p", "tcp", port, "2380", "-j", "DROP"]
        for chain in ("INPUT", "OUTPUT")
        for port in ("--dport", "--sport")
    ]
    for rule in cut:  # clients still reach it on 2379; Raft traffic to its peers is gone
        netns.run(rule, ns=member.netns)
    try:
        t0 = time.monotonic()
        others = [m for m in bed.etcd.members if m is not member]
        seconds = time_to_program(bed, a, "10.1.202.0/24", t0, through=others)
        print(f"\nSYNC member-partitioned {seconds:.2f}")
        assert connected_member(bed, a) is not member
        # the member cut off still answers this node, and says it knows no leader
        eventually(lambda: _says(a, f"etcd member {member.name} knows no leader"), timeout=15)
        assert a.has_route(str(b.subnet))
        assert_lease_kept(bed, a, subnet)
        assert "no leader" in a.log() or "Deadline" in a.log() or "timed out" in a.log().lower()
    finally:
        netns.run(["iptables", "-F"], ns=member.netns)
        member.wait_healthy(30)


def test_stopping_and_restarting_the_leader(bed, overlay_ping):
    a, b = bed.nodes
    subnets = {n: n.subnet for n in bed.nodes}
    leader = bed.etcd.leader()
    changes_before = a.status()["etcd"]["leader_changes_last_hour"]
    t0 = time.monotonic()
    leader.stop_keeping_data()
    try:
        new_leader = eventually(lambda: _new_leader(bed, leader), timeout=20)
        seconds = time_to_program(bed, a, "10.1.203.0/24", t0)
        print(f"\nSYNC leader-stopped {seconds:.2f} (new leader {new_leader.name})")
        for node in bed.nodes:
            assert_lease_kept(bed, node, subnets[node])
        # status: the change seen, the member gone named with what to do
        doc = eventually(lambda: _leader_changes_above(a, changes_before), timeout=10)
        gone = next(m for m in doc["etcd"]["members"] if m["name"] == leader.name)
        assert gone["reachable"] is False
        text = a.status_cli().stdout
        assert f"member {leader.name}: UNREACHABLE from this node" in text
        assert f"etcd member {leader.name} is unreachable from this node" in text
        # doctor asked with the stopped member first: the next one answers for etcd
        first_gone = [leader.url] + [m.url for m in bed.etcd.members if m is not leader]
        _, findings = a.doctor(f"--etcd-endpoints={','.join(first_gone)}")
        assert findings["etcd"]["status"] != "fail", findings["etcd"]
        assert any(
            f["status"] == "warn" and f"etcd member {leader.name} is unreachable" in f["detail"]
            for f in findings.values()
        ), findings
    finally:
        leader.start()
    t0 = time.monotonic()
    seconds = time_to_program(bed, b, "10.1.204.0/24", t0)
    print(f"\nSYNC leader-restarted {seconds:.2f}")
    assert a.has_route(str(b.subnet)) and b.has_route(str(a.subnet))


def _leader_changes_above(node, before: int) -> dict:
    doc = node.status()
    assert doc["etcd"]["leader_changes_last_hour"] > before
    return doc


def _says(node, text: str) -> None:
    assert text in node.status_cli().stdout


def test_three_leader_changes_in_an_hour_are_advised(bed):
    a = bed.nodes[0]
    for _ in range(3):  # real leader transfers, each seen by the node's member checks
        before = a.status()["etcd"]["leader_changes_last_hour"]
        new_leader = bed.etcd.move_leader()
        doc = eventually(lambda before=before: _leader_changes_above(a, before), timeout=15)
        names = {m["id"]: m["name"] for m in doc["etcd"]["members"]}
        assert names[doc["etcd"]["leader"]] == new_leader.name
    changes = a.status()["etcd"]["leader_changes_last_hour"]
    assert changes >= 3
    _says(a, f"advice: the etcd cluster changed its leader {changes} times in the last hour")
    _, findings = a.doctor()
    assert any(
        f["status"] == "warn" and "changed its leader" in f["detail"] for f in findings.values()
    ), findings


def test_status_and_doctor_show_each_members_own_view(bed):
    a = bed.nodes[0]
    # a member restarted by the test before has measured no Raft round trip yet (etcd probes
    # its peers every few seconds)
    doc = eventually(lambda: _every_member_seen_whole(a), timeout=60, interval=2)
    leader = bed.etcd.leader()
    assert doc["etcd"]["leader"]  # named by the member checks of the idle watch
    assert [m["name"] for m in doc["etcd"]["members"] if m["leader"]] == [leader.name]
    # the node's own lease: time left and how long its last renewal took (earlier tests renewed)
    assert 0 < doc["lease"]["last_renewal_took_s"] < 5 and doc["lease"]["expires_in_s"] > 0
    metrics = a.endpoint("/metrics")
    for name in (
        "pyflannel_lease_last_renewal_seconds",
        "pyflannel_lease_expiry_seconds",
        "pyflannel_etcd_leader_changes_last_hour",
        "pyflannel_etcd_member_rtt_seconds",
    ):
        assert f"\n{name} " in metrics, name
    # Raft's round trips between members judged against a heartbeat interval given: on this
    # bed they are ~0.1-1 ms, so a 0.1 ms interval provokes the advice (etcd's own figures).
    _, findings = a.doctor("--etcd-heartbeat-interval=0.1")
    advice = [f for f in findings.values() if "Raft round trip between etcd" in f["detail"]]
    assert advice and "--heartbeat-interval to about" in advice[0]["advice"]
    # (without it, this bed may still warn: etcd's histograms count since each member
    # started, and earlier tests cut members off)
    _, findings = a.doctor()
    members = [f["detail"] for f in findings.values() if f["detail"].startswith("member ")]
    assert len(members) == 3 and all("rtt" in line for line in members), members


def _every_member_seen_whole(node) -> dict:
    doc = node.status()
    for m in doc["etcd"]["members"]:
        assert m["reachable"] and 0 < m["rtt_ms"] < 1000
        assert m["knows_leader"] or m["leader"]
        assert m["leader_changes"] >= 1 and m["slow_applies"] is not None
        assert m["fsync_p99_ms"] is not None and len(m["peer_rtt_p99_ms"]) == 2, m
    return doc


def _new_leader(bed, old):
    leader = bed.etcd.leader()
    assert leader is not old
    return leader
