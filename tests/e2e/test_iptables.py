"""iptables specifics in namespaces: upstream's rule text, a flushed chain and a deleted jump
restored, a previous subnet's rules gone after a restart, the VXLAN peer filter. What both
modes must do alike is in test_traffic_rules.py."""

import re
import subprocess
import time

import pytest

from testbed import netns

from .conftest import eventually, started_bed

ARGS = ("--reconcile-interval=2", "--ip-masq", "--iptables-resync=1")

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("READY", flush=True)
data, addr = s.recvfrom(100)
print(addr[0], flush=True)
"""


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(hosts=2, daemon_args=ARGS)
    yield bed
    bed.close()


def source_seen(server_ns: str, server_ip: str, client_ns: str) -> str:
    """The source address a UDP datagram from client_ns arrives with at server_ip."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "python3", "-c", ECHO_SERVER, server_ip],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "READY"
        send = f"import socket; socket.socket(2, 2).sendto(b'x', ('{server_ip}', 9999))"
        netns.run(["python3", "-c", send], ns=client_ns)
        return server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def test_rules_are_upstreams(bed):
    a = bed.nodes[0]
    nat = a.run("iptables", "-t", "nat", "-S").stdout
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in nat
    assert (
        f'-A FLANNEL-POSTRTG -s {a.subnet} -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN'
        in nat
    )
    assert re.search(
        r"-A FLANNEL-POSTRTG -s 10\.1\.0\.0/16 ! -d 224\.0\.0\.0/4 .* -j MASQUERADE --random-fully",
        nat,
    )
    filt = a.run("iptables", "-t", "filter", "-S").stdout
    assert '-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT' in filt


def test_a_flushed_chain_and_a_deleted_jump_are_restored(bed):
    a = bed.nodes[0]
    a.run("iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    a.run(
        "iptables",
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    )
    t0 = time.monotonic()
    eventually(lambda: _intact(a), timeout=10)
    assert time.monotonic() - t0 < 5  # resync every 1 s here
    assert "iptables rules drifted" in a.log()
    assert source_seen(bed.lan, "198.51.100.254", a.pod_ns) == str(a.underlay_ip)


def _intact(node):
    nat = node.run("iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG").stdout
    assert nat.count("-A FLANNEL-POSTRTG") == 6
    filt = node.run("iptables", "-t", "filter", "-S", "FORWARD").stdout
    assert filt.count("FLANNEL-FWD") == 1


def test_a_previous_subnets_rules_do_not_survive_a_restart(bed):
    a = bed.nodes[0]
    a.stop()
    a.run(
        "iptables",
        "-t",
        "nat",
        "-A",
        "FLANNEL-POSTRTG",
        "-s",
        "10.1.222.0/24",
        "-d",
        "10.1.0.0/16",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "RETURN",
    )
    a.start(*ARGS)
    a.wait_ready()
    nat = a.run("iptables", "-t", "nat", "-S").stdout
    assert "10.1.222.0/24" not in nat
    assert nat.count("-j FLANNEL-POSTRTG") == 1  # the jump was not duplicated by the restart


def test_vxlan_peer_filter_accepts_only_peers(bed):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from testbed.inject import inject

    a, b = bed.nodes
    a.stop()
    a.start(*ARGS, "--vxlan-peer-filter")
    a.wait_ready()
    try:
        chain = a.run("iptables", "-S", "FLANNEL-VXLAN-8472").stdout
        assert f"-A FLANNEL-VXLAN-8472 -s {b.underlay_ip}/32" in chain and chain.rstrip().endswith(
            "-j DROP"
        )
        assert (
            '-A INPUT -p udp -m udp --dport 8472 -m comment --comment "pyflannel vxlan peers" -j FLANNEL-VXLAN-8472'
            in a.run("iptables", "-S", "INPUT").stdout
        )
        # A stranger's VXLAN datagrams carrying a packet for a's pod are dropped ...
        forged = bytes(
            VXLAN(vni=1)
            / Ether(dst=a.ip_json("link", "show", "flannel.1")[0]["address"])
            / IP(src=str(b.pod_ip), dst=str(a.pod_ip))
            / UDP(dport=9)
        )
        inject(
            bed.lan,
            [
                dict(
                    src="198.51.100.254",
                    dst=str(a.underlay_ip),
                    sport=40000,
                    dport=8472,
                    payload_hex=forged.hex(),
                )
            ]
            * 5,
        )
        dropped = [
            line
            for line in a.run(
                "iptables", "-L", "FLANNEL-VXLAN-8472", "-v", "-x", "-n"
            ).stdout.splitlines()
            if "DROP" in line
        ]
        assert int(dropped[0].split()[0]) >= 5
        # ... while the peer's traffic passes.
        assert a.ping(b.pod_ip, count=2, interval=0.1).received == 2
        assert b.ping(a.pod_ip, count=2, interval=0.1).received == 2
    finally:
        a.stop()
        a.start(*ARGS)
        a.wait_ready()
