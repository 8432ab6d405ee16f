"""The UDP fast path with real sockets: a SOCK_DGRAM socketpair plays a TUN with virtio-net
headers, a loopback socket plays a peer. Batches go out as UDP_SEGMENT sends (the peer still
receives one inner packet per datagram), batches come in through UDP_GRO and reach the TUN as
GSO writes that re-segment into exactly the packets sent; if the kernel refuses an offload
the path falls back per packet, once, and says so."""

import errno
import socket
import struct
import sys

import pytest
from scapy.layers.inet import ICMP, IP, TCP

import pyflannel.backend.udp as udp_package
from pyflannel.backend.udp import forwarder, gso, tun
from pyflannel.backend.udp import packet as pk
from pyflannel.backend.udp.forwarder import UDP_SEGMENT

from .test_udp_forwarder import Rig
from .test_udp_gso import resegment


@pytest.fixture(params=["epoll", "asyncio", "threads"])
def rig(request):
    r = Rig(request.param, fastpath=True, start=False)
    yield r
    r.close()


def outgoing_flow(n, size=1380):
    return [
        bytes(
            IP(src="10.1.1.2", dst="10.1.2.2", id=100 + k, ttl=64)
            / TCP(sport=5000, dport=80, seq=1 + size * k, flags="A")
            / bytes(size)
        )
        for k in range(n)
    ]


def incoming_flow(n, size=1380, ttl=10):
    return [
        bytes(
            IP(src="10.1.2.2", dst="10.1.1.2", id=200 + k, ttl=ttl)
            / TCP(sport=80, dport=5000, seq=9 + size * k, flags="A")
            / bytes((k + i) % 256 for i in range(size))
        )
        for k in range(n)
    ]


def minus_one_ttl(packet: bytes) -> bytes:
    ip = IP(packet)
    ip.ttl -= 1
    del ip.chksum
    return bytes(ip)


def test_a_burst_from_the_tun_leaves_as_one_datagram_per_inner_packet(rig):
    sent_calls = []
    real_sendmsg = rig.sock.sendmsg
    rig.sock = rig.fwd.sock = _Recording(real_sendmsg, rig.sock, sent_calls)
    packets = outgoing_flow(20)
    for p in packets:  # queued before the data path looks: one drain sees them all
        rig.kernel.send(gso.PLAIN + p)
    rig.fwd.start()
    received = [rig.peer.recvfrom(65536)[0] for _ in packets]
    assert received == [minus_one_ttl(p) for p in packets]  # each datagram: one inner packet
    assert sent_calls and max(sent_calls) > 1  # ... sent with UDP_SEGMENT, several per call
    rig.wait(lambda: rig.fwd.to_peers.packets == 20)


def test_the_first_packet_of_a_wake_up_leaves_before_the_tun_is_read_again(rig, monkeypatch):
    # A lone packet must not wait for the read that finds the TUN empty; a burst still forms
    # its batch behind the first packet.
    events = []
    real_readv, real_sendto, real_sendmsg = forwarder.os.readv, rig.sock.sendto, rig.sock.sendmsg

    def readv(fd, buffers):
        try:
            n = real_readv(fd, buffers)
        except BlockingIOError:
            events.append("empty")
            raise
        events.append("read")
        return n

    def sendto(data, address):
        events.append("send 1")
        return real_sendto(data, address)

    def sendmsg(buffers, *args):
        events.append(f"send {len(buffers)}")
        return real_sendmsg(buffers, *args)

    monkeypatch.setattr(forwarder.os, "readv", readv)
    rig.sock = rig.fwd.sock = _Patched(rig.sock, sendto=sendto, sendmsg=sendmsg)
    for p in outgoing_flow(5):  # queued before the data path looks: one wake-up sees them all
        rig.kernel.send(gso.PLAIN + p)
    rig.fwd.start()
    for _ in range(5):
        rig.peer.recvfrom(65536)
    rig.wait(lambda: "empty" in events)
    assert events == ["read", "send 1", "read", "read", "read", "read", "empty", "send 4"]
    del events[:]
    rig.kernel.send(gso.PLAIN + outgoing_flow(1)[0])  # alone
    rig.peer.recvfrom(65536)
    rig.wait(lambda: "empty" in events)
    assert events == ["read", "send 1", "empty"]


def test_a_burst_from_a_peer_reaches_the_tun_as_gso_writes_of_the_same_packets(rig):
    rig.fwd.start()
    packets = incoming_flow(12)
    # The peer sends them as one UDP_SEGMENT batch, so our UDP_GRO socket gets them at once.
    rig.peer.sendmsg(
        packets,
        [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(packets[0])))],
        0,
        rig.our_addr,
    )
    frames = []
    while sum(len(f) for f in frames) < 12:
        frame = rig.kernel.recv(65536 + 10)
        frames.append(
            resegment([frame[:10], frame[10:50], frame[50:]])
            if frame[1] == gso.GSO_TCPV4
            else [frame[10:]]
        )
    assert [p for f in frames for p in f] == [minus_one_ttl(p) for p in packets]
    assert len(frames) < 12  # coalesced: fewer writes than packets
    rig.wait(lambda: rig.fwd.from_peers.packets == 12)


def test_non_tcp_from_a_peer_is_written_plain(rig):
    rig.fwd.start()
    ping = bytes(IP(src="10.1.2.2", dst="10.1.1.2", ttl=5) / ICMP() / b"hello")
    rig.peer.sendto(ping, rig.our_addr)
    frame = rig.kernel.recv(65536)
    assert frame[:10] == gso.PLAIN and frame[10:] == minus_one_ttl(ping)


def test_no_route_icmp_goes_back_with_a_vnet_header(rig):
    rig.fwd.start()
    rig.kernel.send(gso.PLAIN + bytes(IP(src="10.1.1.2", dst="10.1.9.9") / TCP(flags="S")))
    frame = rig.kernel.recv(65536)
    assert frame[:10] == gso.PLAIN and IP(frame[10:])[ICMP].type == 3


def test_a_refused_udp_segment_falls_back_once_and_loses_nothing(rig, caplog):
    def refuse(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    rig.fwd.sock = _Patched(rig.sock, sendmsg=refuse)
    packets = outgoing_flow(10)
    for p in packets:
        rig.kernel.send(gso.PLAIN + p)
    rig.fwd.start()
    received = [rig.peer.recvfrom(65536)[0] for _ in packets]
    assert received == [minus_one_ttl(p) for p in packets]
    assert not rig.fwd.fast_tx and "UDP_SEGMENT refused" in rig.fwd.fast_off["tx"]
    assert caplog.text.count("batching off") == 1
    assert rig.fwd.snapshot()["fastpath"] == {
        "tx": False,
        "rx": True,
        "tso": False,
        "off": rig.fwd.fast_off,
    }


class _Patched:
    """A socket with some methods replaced."""

    def __init__(self, sock, **methods):
        self._sock, self._methods = sock, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._sock, name)


class _Recording(_Patched):
    def __init__(self, sendmsg, sock, calls):
        def recording(buffers, *args):
            calls.append(len(buffers))
            return sendmsg(buffers, *args)

        super().__init__(sock, sendmsg=recording)


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return gso.VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


@pytest.fixture
def tso_rig(rig, monkeypatch):
    """The rig with TSO offered (the socketpair cannot take the ioctl: pretend it did)."""
    monkeypatch.setattr(tun, "set_offload", lambda fd, flags: None)
    assert rig.fwd.offer_tso() and rig.fwd.snapshot()["fastpath"]["tso"]
    return rig


def test_a_tcp_super_packet_from_the_tun_leaves_as_the_packets_tcp_would_have_sent(tso_rig):
    rig, n, size = tso_rig, 30, 1380
    whole = IP(src="10.1.1.2", dst="10.1.2.2", id=100, ttl=64) / TCP(
        sport=5000, dport=80, seq=1, flags="A"
    )
    big = bytes(whole / bytes(size * n))
    # As the kernel hands it over: "segment at 1380", TCP checksum to be finished.
    rig.kernel.send(vnet(gso.NEEDS_CSUM, gso.GSO_TCPV4, 40, size, 20, 16) + big)
    rig.fwd.start()
    received = [rig.peer.recvfrom(65536)[0] for _ in range(n)]
    assert received == [minus_one_ttl(p) for p in outgoing_flow(n, size)]
    rig.wait(lambda: rig.fwd.to_peers.packets == n)


def test_partial_checksums_from_the_tun_are_finished_before_sending(tso_rig):
    rig = tso_rig
    ack = IP(bytes(IP(src="10.1.1.2", dst="10.1.2.2") / TCP(sport=5000, dport=80, flags="A")))
    partial = bytearray(bytes(ack))
    partial[36:38] = pk.ones_sum(bytes(partial[12:20]) + b"\0\x06\0\x14").to_bytes(2, "big")
    rig.kernel.send(vnet(gso.NEEDS_CSUM, 0, 0, 0, 20, 16) + bytes(partial))
    rig.fwd.start()
    assert rig.peer.recvfrom(65536)[0] == minus_one_ttl(bytes(ack))


def test_order_to_a_peer_is_kept_around_super_packets(tso_rig):
    rig = tso_rig
    first, second = outgoing_flow(2, 1000)
    rest = IP(src="10.1.1.2", dst="10.1.2.2", id=102, ttl=64) / TCP(
        sport=5000, dport=80, seq=2001, flags="A"
    )
    rig.kernel.send(gso.PLAIN + first)
    rig.kernel.send(gso.PLAIN + second)
    rig.kernel.send(vnet(0, gso.GSO_TCPV4, 40, 1000, 20, 16) + bytes(rest / bytes(3000)))
    rig.fwd.start()
    seqs = [IP(rig.peer.recvfrom(65536)[0])[TCP].seq for _ in range(5)]
    assert seqs == [1, 1001, 2001, 3001, 4001]


def test_without_numpy_tso_stays_off_and_the_device_is_told(rig, monkeypatch, caplog):
    offered = []
    monkeypatch.setattr(tun, "set_offload", lambda fd, flags: offered.append(flags))
    monkeypatch.setitem(sys.modules, "pyflannel.backend.udp.tso", None)  # import fails ...
    monkeypatch.delattr(udp_package, "tso", raising=False)  # ... even if done before
    assert not rig.fwd.offer_tso()
    assert offered == [0]  # what an earlier run offered is taken back
    assert "numpy is not installed" in rig.fwd.fast_off["tso"]
    assert caplog.text.count("TSO off") == 1
    assert rig.fwd.snapshot()["fastpath"]["tso"] is False


def test_without_tso_a_super_packet_is_dropped_and_counted_not_sent_whole(rig, caplog):
    assert not rig.fwd.offer_tso()  # a socketpair refuses TUNSETOFFLOAD
    assert "TUNSETOFFLOAD refused" in rig.fwd.fast_off["tso"] and caplog.text.count("TSO off") == 1
    big = IP(src="10.1.1.2", dst="10.1.2.2") / TCP(sport=5000, dport=80, flags="A") / bytes(5000)
    rig.kernel.send(vnet(gso.NEEDS_CSUM, gso.GSO_TCPV4, 40, 1380, 20, 16) + bytes(big))
    rig.kernel.send(gso.PLAIN + outgoing_flow(1)[0])  # and the path goes on
    rig.fwd.start()
    assert IP(rig.peer.recvfrom(65536)[0])[TCP].seq == 1
    assert rig.fwd.to_peers.drops == {"bad_offload": 1}
