"""Faults on a 3-node VXLAN bed with default settings (30 s periodic reconcile, 5 s iptables
resync): what someone deletes is repaired (measured), kill -9 costs no traffic, a frozen etcd
is logged once and its end once. Timings are printed as ``REPAIR <what> <seconds>``."""

import time

import pytest

from .conftest import started_bed

ARGS = ("--ip-masq",)  # everything else at its default


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=3, daemon_args=ARGS)
    yield bed
    bed.close()


def until(check, timeout: float = 20.0) -> float:
    """Seconds until ``check()`` is true."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, "not repaired in time"
        time.sleep(0.01)
    return time.monotonic() - t0


def reaches(a, b) -> bool:
    return a.ping(b.pod_ip, count=1, wait=0.5).received == 1


def programmed(node, peer) -> bool:
    sn = peer.subnet
    return (
        str(sn) in [r["dst"] for r in node.routes()]
        and str(sn.network_address) in [n["dst"] for n in node.neighbours()]
        and str(peer.underlay_ip) in [e["dst"] for e in node.fdb()]
    )


def report(what: str, seconds: float) -> None:
    print(f"\nREPAIR {what} {seconds:.3f}")


def test_a_deleted_vxlan_device_comes_back_with_its_mac_and_all_peers(bed):
    a, b, c = bed.nodes
    mac = a.ip_json("link", "show", "flannel.1")[0]["address"]
    a.run("ip", "link", "del", "flannel.1")
    seconds = until(lambda: programmed(a, b) and programmed(a, c))
    report("flannel.1-deleted", seconds)
    assert seconds < 5  # not the 30 s periodic pass
    assert a.ip_json("link", "show", "flannel.1")[0]["address"] == mac  # peers' entries stay valid
    assert reaches(a, b) and reaches(b, a) and reaches(a, c)


@pytest.mark.parametrize("what", ["route", "fdb", "neighbour"])
def test_a_deleted_peer_entry_is_repaired_at_once(bed, what):
    a, b, _ = bed.nodes
    sn = b.subnet
    if what == "route":
        a.run("ip", "route", "del", str(sn), "proto", "152")
    elif what == "fdb":
        mac = {n["dst"]: n["lladdr"] for n in a.neighbours()}[str(sn.network_address)]
        a.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", str(b.underlay_ip))
    else:
        a.run("ip", "neigh", "del", str(sn.network_address), "dev", "flannel.1")
    seconds = until(lambda: programmed(a, b))
    report(f"{what}-deleted", seconds)
    assert seconds < 2 and reaches(a, b)


def test_the_device_set_down_is_set_up_again(bed):
    a, b, _ = bed.nodes
    a.run("ip", "link", "set", "flannel.1", "down")
    seconds = until(
        lambda: "UP" in a.ip_json("link", "show", "flannel.1")[0]["flags"] and programmed(a, b)
    )
    report("flannel.1-down", seconds)
    assert seconds < 2 and reaches(a, b)


def test_a_flushed_masquerade_chain_is_restored_within_the_resync_period(bed):
    a = bed.nodes[0]
    a.run("iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    seconds = until(
        lambda: a.run("iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG").stdout.count("-A ") == 6
    )
    report("masquerade-chain-flushed", seconds)
    assert seconds <= 6  # --iptables-resync defaults to 5 s


def test_kill_9_costs_no_traffic_and_the_restart_keeps_the_subnet(bed):
    a, b, _ = bed.nodes
    subnet = a.subnet
    ping = b.start_ping(a.pod_ip, interval=0.02, count=200)
    time.sleep(0.5)
    a.kill()
    a.start(*ARGS)
    a.wait_ready()
    result = b.finish_ping(ping)
    assert result.lost == 0, result.output[-300:]
    assert a.subnet == subnet and programmed(a, b)


def test_the_etcd_outage_is_logged_once_and_its_end(bed):
    a, b, _ = bed.nodes
    mark = len(a.log())
    ping = b.start_ping(a.pod_ip, interval=0.05)
    bed.etcd.pause()
    time.sleep(30)  # longer than the 15 s it takes to notice a frozen member
    bed.etcd.resume()
    seconds = until(lambda: "lease watch: recovered after" in a.log()[mark:], timeout=40)
    result = b.finish_ping(ping, interrupt=True)
    report("etcd-frozen-30s-resync-after-resume", seconds)
    log = a.log()[mark:]
    # One line when the outage is noticed, one when it ends: not one per retry.
    assert log.count("; resuming the watch after revision") == 1
    assert log.count("lease watch: recovered after") == 1
    assert result.lost == 0
