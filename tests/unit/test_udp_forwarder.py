"""The UDP forwarder with real sockets: a SOCK_DGRAM socketpair plays the TUN device (it keeps
packet boundaries like TUN does), a socket on 127.0.0.2 plays a peer. Every data-path
strategy (threads, asyncio, uvloop) must behave the same."""

import socket
import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP

from pyflannel.backend.udp import packet as pk
from pyflannel.backend.udp.forwarder import Forwarder
from pyflannel.backend.udp.routes import ForwardingTable

OWN = IPv4Network("10.1.1.0/24")
PEER_SUBNET = IPv4Network("10.1.2.0/24")
MTU = 1472


class Rig:
    """A SOCK_DGRAM socketpair plays the TUN (``kernel`` is the kernel's end), loopback
    sockets play us, a peer and a stranger. The forwarder starts at once unless told not
    to (to queue packets before its first drain)."""

    def __init__(self, datapath: str, fastpath: bool = False, start: bool = True):
        self.kernel, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.settimeout(2)
        tun.setblocking(False)
        self._tun = tun
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.2", 0))
        self.peer.settimeout(2)
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.3", 0))
        self.fwd = Forwarder(tun.fileno(), self.sock, MTU, datapath, fastpath)
        self.fwd.set_local(OWN, IPv4Network("10.1.0.0/16"))
        self.fwd.table = ForwardingTable.build(
            [(PEER_SUBNET, IPv4Address("127.0.0.2"), self.peer.getsockname()[1])]
        )
        if start:
            self.fwd.start()
        self.our_addr = self.sock.getsockname()

    def close(self):
        self.fwd.stop()
        for s in (self.kernel, self._tun, self.sock, self.peer, self.stranger):
            s.close()

    def wait(self, check, timeout=3.0):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)


@pytest.fixture(params=["epoll", "threads", "asyncio", "uvloop"])
def rig(request):
    r = Rig(request.param)
    yield r
    r.close()


def pod_packet(src="10.1.1.2", dst="10.1.2.2", ttl=64, payload=b"hello") -> bytes:
    return bytes(IP(src=src, dst=dst, ttl=ttl) / UDP(sport=5000, dport=6000) / payload)


def test_tun_to_peer_carries_exactly_the_inner_packet_with_ttl_minus_one(rig):
    rig.kernel.send(pod_packet(ttl=64))
    data, addr = rig.peer.recvfrom(65536)
    assert addr == rig.our_addr
    assert data == pod_packet(ttl=63)  # scapy's own encoding, checksum included
    rig.wait(lambda: rig.fwd.to_peers.packets == 1)  # counted just after sendto() returns


def test_peer_to_tun_delivers_packets_for_our_subnet(rig):
    rig.peer.sendto(pod_packet(src="10.1.2.2", dst="10.1.1.2", ttl=10), rig.our_addr)
    assert rig.kernel.recv(65536) == pod_packet(src="10.1.2.2", dst="10.1.1.2", ttl=9)
    rig.wait(lambda: rig.fwd.from_peers.packets == 1)


def test_datagrams_from_unknown_senders_are_dropped_and_counted(rig):
    rig.stranger.sendto(pod_packet(src="10.1.2.2", dst="10.1.1.2"), rig.our_addr)
    rig.wait(lambda: rig.fwd.from_peers.drops.get(pk.UNKNOWN_SENDER) == 1)
    assert rig.fwd.from_peers.packets == 0


def test_packets_for_other_subnets_are_not_relayed(rig):
    rig.peer.sendto(pod_packet(src="10.1.2.2", dst="10.1.3.9"), rig.our_addr)
    rig.wait(lambda: rig.fwd.from_peers.drops.get(pk.NOT_FOR_US) == 1)


def test_inner_sources_outside_the_peers_subnet_are_dropped_as_spoofed(rig):
    rig.peer.sendto(pod_packet(src="10.1.7.7", dst="10.1.1.2"), rig.our_addr)
    rig.wait(lambda: rig.fwd.from_peers.drops.get(pk.SPOOFED_SOURCE) == 1)
    assert rig.fwd.from_peers.packets == 0


def test_no_route_answers_icmp_net_unreachable_into_the_tun(rig):
    rig.kernel.send(pod_packet(dst="10.1.9.9"))
    reply = IP(rig.kernel.recv(65536))
    assert (reply.src, reply.dst) == ("10.1.0.0", "10.1.1.2")  # never a local address
    assert (reply[ICMP].type, reply[ICMP].code) == (3, 0)
    rig.wait(lambda: rig.fwd.to_peers.drops.get(pk.NO_ROUTE) == 1 and rig.fwd.icmp_sent == 1)


def test_table_swaps_take_effect_without_restart(rig):
    rig.fwd.table = ForwardingTable()
    rig.kernel.send(bytes(IP(src="10.1.1.2", dst="10.1.2.2") / ICMP()))
    rig.wait(lambda: rig.fwd.to_peers.drops.get(pk.NO_ROUTE) == 1)


@given(st.lists(st.binary(max_size=1600), min_size=1, max_size=20))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_garbage_from_a_known_peer_never_crashes_and_every_datagram_is_accounted(rig, datagrams):
    before = rig.fwd.from_peers.packets + sum(rig.fwd.from_peers.drops.values())
    for d in datagrams:
        rig.peer.sendto(d, rig.our_addr)
    rig.wait(
        lambda: (
            rig.fwd.from_peers.packets + sum(rig.fwd.from_peers.drops.values())
            == before + len(datagrams)
        )
    )
    assert rig.fwd.alive
    # And real traffic still flows.
    rig.kernel.send(pod_packet())
    assert rig.peer.recvfrom(65536)[0] == pod_packet(ttl=63)
    while True:  # drain what garbage made it to the "kernel" (valid packets for our subnet)
        rig.kernel.setblocking(False)
        try:
            rig.kernel.recv(65536)
        except BlockingIOError:
            break
        finally:
            rig.kernel.setblocking(True)
            rig.kernel.settimeout(2)
