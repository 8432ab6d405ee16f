"""The MTU fixed per peer path (--fix-path-mtu, on by default). Four VXLAN nodes; the path
between h1 and h3 (both ways) carries 1400-byte underlay packets and silently drops larger
ones, as a small link whose router sends no ICMP "fragmentation needed" would: the pods' full
1450 bytes in VXLAN (1500) vanish there, 1350 inside pass. h1-h2 and every other path carry
the full size. h4 runs upstream flanneld v0.20.2 (started for its own test).

The fix on each side: the peer's route carries 1350 (``mtu lock``), TCP SYNs to and from its
subnet have their MSS clamped to 1310; every other peer keeps 1450. Mended, it goes."""

import contextlib
import re
import subprocess
import time

import pytest

from testbed import netns

from .conftest import eventually, require_testbed, require_upstream

ARGS = ("--reconcile-interval=2", "--probe-interval=1", "--iptables-resync=1")
NARROW = 1400  # bytes the narrow path carries (underlay IP packets)
FIXED = NARROW - 50  # what is left inside VXLAN
POD_MTU = 1450
FIX_TARGET = 20.0  # seconds from the black hole to the fix: 3 lost rounds, then one measure


@pytest.fixture(scope="module")
def bed():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=4) as bed:
        bed.put_config()
        for node in bed.nodes[:3]:
            node.start(*ARGS)
        for node in bed.nodes[:3]:
            node.wait_ready()
            node.add_pod()
        yield bed


OFFLOADS = (
    "tso",
    "gso",
    "gro",
    "tx-udp-segmentation",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
)


def narrow(bed, a, b, on: bool = True) -> None:
    """The path between a and b carries NARROW bytes, both ways; larger packets vanish. The
    ends' underlay devices segment as a real NIC does and merge nothing on receipt (veth
    would pass 64 KB segmentation-offload packets on, which the length match would take for
    giant packets)."""
    for here, there in ((a, b), (b, a)):
        here.run("ethtool", "-K", "eth0", *(x for o in OFFLOADS for x in (o, "off")), check=False)
        rule = ["-s", str(there.underlay_ip), "-p", "udp", "-m", "length"]
        rule += ["--length", f"{NARROW + 1}:65535", "-j", "DROP"]
        here.run("iptables", "-I" if on else "-D", "INPUT", *rule)


def fixed_mtu(node, peer) -> int | None:
    rows = {r["subnet"]: r for r in node.status()["peers"]}
    return (rows[str(peer.subnet)]["path"] or {}).get("path_mtu")


def _fixed(node, peer, want):
    assert fixed_mtu(node, peer) == want
    return True


@contextlib.contextmanager
def serving(node, script: str):
    """``script`` run in node's pod with the pod's address, once it printed READY: its output
    lines to read; killed after."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", node.pod_ns, "python3", "-c", script, str(node.pod_ip)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "READY"
        yield server.stdout
    finally:
        server.kill()
        server.wait()


def transfer(src, dst, megabytes: int = 50, timeout: float = 60) -> int:
    """Bytes a TCP connection from src's pod delivers to a server in dst's pod."""
    with serving(dst, SINK) as received:
        netns.run(
            ["python3", "-c", SOURCE, str(dst.pod_ip), str(megabytes)],
            ns=src.pod_ns,
            timeout=timeout,
        )
        return int(received.readline().strip() or 0)


SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("READY", flush=True)
c, _ = s.accept(); c.settimeout(30); n = 0
while (chunk := c.recv(1 << 16)):
    n += len(chunk)
print(n, flush=True)
"""
SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=30)
block = bytes(1 << 20)
for _ in range(int(sys.argv[2])):
    c.sendall(block)
c.close()
"""


def test_the_narrow_path_is_fixed_on_both_sides_and_only_there(bed):
    h1, h2, h3, _ = bed.nodes
    eventually(lambda: _state(h1, h3, "ok"), timeout=15)
    narrow(bed, h1, h3)
    started = time.monotonic()
    for a, b in ((h1, h3), (h3, h1)):
        eventually(lambda a=a, b=b: _fixed(a, b, FIXED), timeout=FIX_TARGET)
    took = time.monotonic() - started
    print(f"\npath MTU fixed on both sides {took:.1f} s after the path narrowed")
    route = h1.run("ip", "route", "show", str(h3.subnet)).stdout
    assert f"mtu lock {FIXED}" in route, route
    assert "mtu" not in h1.run("ip", "route", "show", str(h2.subnet)).stdout
    assert fixed_mtu(h1, h2) is None and fixed_mtu(h2, h1) is None
    mangle = h1.run("iptables", "-t", "mangle", "-S").stdout
    for side in ("-s", "-d"):
        assert (
            f"-A FLANNEL-MSS {side} {h3.subnet} -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment "
            f'--comment "pyflannel path mtu" -j TCPMSS --set-mss {FIXED - 40}'
        ) in mangle, mangle
    assert str(h2.subnet) not in mangle
    line = f"path to {h3.subnet} carries {FIXED} bytes, not {POD_MTU}: route MTU {FIXED} and MSS"
    assert h1.log().count(line) == 1, h1.log()[-3000:]
    status = h1.status_cli()
    assert status.returncode == 2 and "DEGRADED" in status.stdout, status.stdout  # not UNHEALTHY
    assert f"fixed at {FIXED}" in status.stdout and "not programmed" not in status.stdout
    metrics = h1.endpoint("/metrics")
    assert f'pyflannel_peer_path_mtu_bytes{{peer="{h3.subnet}"}} {FIXED}.0' in metrics
    trace = h1.trace_cli(str(h1.pod_ip), str(h3.pod_ip)).stdout
    assert f"carries {FIXED} bytes, not the pod MTU {POD_MTU}: fixed on this path" in trace, trace


def test_a_bulk_transfer_crosses_the_fixed_path_both_ways_and_h1_h2_keeps_full_size(bed):
    h1, h2, h3, _ = bed.nodes
    eventually(lambda: _fixed(h1, h3, FIXED), timeout=FIX_TARGET)
    assert transfer(h1, h3) == 50 << 20
    assert transfer(h3, h1) == 50 << 20
    full = h1.ping(h2.pod_ip, count=3, size=POD_MTU - 28, dont_fragment=True)
    assert full.received == 3, full  # the other path keeps the pod MTU


def test_a_pods_own_pmtu_discovery_learns_the_smaller_size(bed):
    """A UDP sender with DF in h1's pod: its first 1450-byte datagram to h3's pod gets
    "fragmentation needed" from h1 (the route's MTU), so its socket learns 1350; the next at
    1450 is refused locally, one of 1350 arrives."""
    h1, _, h3, _ = bed.nodes
    eventually(lambda: _fixed(h1, h3, FIXED), timeout=FIX_TARGET)
    with serving(h3, UDP_SINK) as received:
        out = netns.run(["python3", "-c", UDP_DF_SENDER, str(h3.pod_ip)], ns=h1.pod_ns).stdout
        assert f"learned {FIXED}" in out and "second refused 90" in out, out  # EMSGSIZE
        assert received.readline().strip() == str(FIXED - 28)


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999))
print("READY", flush=True)
while True:
    data = s.recv(65535)
    if data[:1] == b"y":
        print(len(data), flush=True)
"""
UDP_DF_SENDER = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO
s.connect((sys.argv[1], 9999))
s.send(b"x" * ({POD_MTU} - 28))
time.sleep(0.5)
try:
    s.send(b"x" * ({POD_MTU} - 28)); print("second sent")
except OSError as e:
    print("second refused", e.errno)
print("learned", s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU
s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # the ICMP's error, read (and cleared)
s.send(b"y" * ({FIXED} - 28))
"""


def test_a_pod_that_drops_all_icmp_still_gets_tcp_through_the_clamp(bed):
    h1, _, h3, _ = bed.nodes
    eventually(lambda: _fixed(h1, h3, FIXED), timeout=FIX_TARGET)
    for node in (h1, h3):
        netns.run(["iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP"], ns=node.pod_ns)
    try:
        assert transfer(h1, h3, megabytes=20) == 20 << 20
        assert transfer(h3, h1, megabytes=20) == 20 << 20
    finally:
        for node in (h1, h3):
            netns.run(["iptables", "-D", "INPUT", "-p", "icmp", "-j", "DROP"], ns=node.pod_ns)


def test_an_upstream_peer_is_fixed_on_pyflannels_side_and_its_own_state_untouched(bed):
    """Upstream flanneld on h4 behind a narrow path to h1: h1 fixes its route and clamps
    SYNs both ways (upstream clamps nothing), so TCP between their pods works both ways even
    with ICMP dropped in h1's pod; h4's routes and rules are as upstream makes them."""
    from testbed.upstream import start_upstream

    require_upstream()
    h1, _, _, h4 = bed.nodes
    start_upstream(h4)
    h4.add_pod()
    before = h4.run("ip", "route", "show").stdout, h4.run("iptables", "-t", "mangle", "-S").stdout
    narrow(bed, h1, h4)
    try:
        eventually(lambda: _fixed(h1, h4, FIXED), timeout=FIX_TARGET)
        netns.run(["iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP"], ns=h1.pod_ns)
        assert transfer(h1, h4, megabytes=20) == 20 << 20
        assert transfer(h4, h1, megabytes=20) == 20 << 20
        route, mangle = (
            h4.run("ip", "route", "show").stdout,
            h4.run("iptables", "-t", "mangle", "-S").stdout,
        )
        assert "mtu" not in route and "FLANNEL-MSS" not in mangle
        assert (route, mangle) == before
    finally:
        netns.run(["iptables", "-D", "INPUT", "-p", "icmp", "-j", "DROP"], ns=h1.pod_ns)
        narrow(bed, h1, h4, on=False)


def test_mended_the_fix_goes_within_its_target(bed):
    """The narrow path mended: within HOLD (30 s from the fix) plus three full-size rounds,
    the route MTU and the clamps are gone on both sides."""
    h1, _, h3, _ = bed.nodes
    eventually(lambda: _fixed(h1, h3, FIXED), timeout=FIX_TARGET)
    narrow(bed, h1, h3, on=False)
    started = time.monotonic()
    for a, b in ((h1, h3), (h3, h1)):
        eventually(lambda a=a, b=b: _fixed(a, b, None), timeout=45)
    print(f"\nfix removed {time.monotonic() - started:.1f} s after the path was mended")
    assert "mtu" not in h1.run("ip", "route", "show", str(h3.subnet)).stdout
    assert str(h3.subnet) not in h1.run("iptables", "-t", "mangle", "-S").stdout
    assert re.search(rf"path to {h3.subnet} carries the full {POD_MTU} bytes again", h1.log())
    # from the node: the pod that learned 1350 keeps it until its own kernel's PMTU cache
    # expires (net.ipv4.route.mtu_expires, 10 min), as after any ICMP "fragmentation needed"
    full = h1.ping(h3.pod_ip, count=3, size=POD_MTU - 28, dont_fragment=True, from_pod=False)
    assert full.received == 3, full


def _state(node, peer, want):
    rows = {r["subnet"]: r for r in node.status()["peers"]}
    assert (rows[str(peer.subnet)]["path"] or {}).get("state") == want
    return True


@pytest.fixture(scope="module")
def nft_bed():
    from testbed.bed import TestBed

    require_testbed()
    with TestBed(hosts=2) as bed:
        bed.put_config(
            {"Network": "10.1.0.0/16", "EnableNFTables": True, "Backend": {"Type": "vxlan"}}
        )
        for node in bed.nodes:
            node.start(*ARGS, "--ip-masq")
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


def test_nftables_mode_clamps_in_its_own_chain(nft_bed):
    a, b = nft_bed.nodes
    narrow(nft_bed, a, b)
    try:
        eventually(lambda: _fixed(a, b, FIXED), timeout=FIX_TARGET)
        listed = a.run("nft", "list", "chain", "ip", "flannel-ipv4", "mss").stdout
        for side in ("saddr", "daddr"):
            assert (
                f"ip {side} {b.subnet} tcp flags syn / syn,rst tcp option maxseg size > "
                f"{FIXED - 40} tcp option maxseg size set {FIXED - 40}"
            ) in listed, listed
        netns.run(["iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP"], ns=a.pod_ns)
        assert transfer(a, b, megabytes=20) == 20 << 20
        assert transfer(b, a, megabytes=20) == 20 << 20
    finally:
        narrow(nft_bed, a, b, on=False)
