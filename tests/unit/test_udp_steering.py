"""Worker steering: the classic BPF program, run by the kernel on a real SO_REUSEPORT group on
loopback, sends each datagram to socket ``flow_hash(inner packet) % workers``; the hash keeps
a flow and its replies together and spreads the flows of one peer. (That the kernel's TUN then
sends the replies through the same worker: tests/e2e/test_udp_cluster.py.)"""

import random
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment

from pyflannel.backend.udp import steering


def group(n: int) -> list[socket.socket]:
    socks = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    steering.attach(socks[0], n)
    return socks


def receiver(socks, payload: bytes) -> int:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.sendto(payload, socks[0].getsockname())
    sender.close()
    hits = []
    for i, s in enumerate(socks):
        try:
            if s.recv(65536) == payload:
                hits.append(i)
        except BlockingIOError:
            pass
    assert len(hits) == 1, hits
    return hits[0]


def random_packet(rng: random.Random) -> bytes:
    src = ".".join(str(rng.randrange(256)) for _ in range(4))
    dst = ".".join(str(rng.randrange(256)) for _ in range(4))
    options = [b"\x01\x01\x01\x00"] if rng.random() < 0.3 else []  # NOPs: a longer header
    kind = rng.choice([TCP, UDP, ICMP])
    if kind is ICMP:
        transport = ICMP(id=rng.randrange(65536), seq=rng.randrange(65536))
    else:
        transport = kind(sport=rng.randrange(65536), dport=rng.randrange(65536))
    fragment = rng.choice([{}, {}, {"flags": "MF"}, {"frag": rng.randrange(1, 8192)}])
    return bytes(IP(src=src, dst=dst, options=options, **fragment) / transport / b"data")


@pytest.mark.parametrize("workers", [2, 3])
def test_the_kernel_runs_the_program_as_flow_hash_mod_workers(workers):
    socks = group(workers)
    try:
        rng = random.Random(workers)
        seen = set()
        for _ in range(60):
            packet = random_packet(rng)
            index = receiver(socks, packet)
            assert index == steering.flow_hash(packet) % workers
            seen.add(index)
        assert seen == set(range(workers))
    finally:
        for s in socks:
            s.close()


def test_a_datagram_too_short_for_the_program_goes_to_worker_0():
    socks = group(2)
    try:
        assert receiver(socks, b"\x45\x00junk") == 0
        assert receiver(socks, b"") == 0
    finally:
        for s in socks:
            s.close()


def test_a_flow_and_its_replies_hash_alike():
    rng = random.Random(7)
    for _ in range(200):
        a, b = f"10.1.{rng.randrange(256)}.2", f"10.1.{rng.randrange(256)}.3"
        sp, dp = rng.randrange(65536), rng.randrange(65536)
        there = bytes(IP(src=a, dst=b) / TCP(sport=sp, dport=dp))
        back = bytes(IP(src=b, dst=a) / TCP(sport=dp, dport=sp, flags="A"))
        assert steering.flow_hash(there) == steering.flow_hash(back)


def test_an_echo_and_its_reply_hash_alike_whatever_their_sequence_numbers():
    # The kernel makes the reply inside the TUN write of the request and queues it by its own
    # hash, which has no ports for ICMP: ours must not use the ICMP checksum as "ports".
    hashes = {
        steering.flow_hash(bytes(IP(src=s, dst=d) / ICMP(type=t, id=9, seq=seq)))
        for seq in range(64)
        for s, d, t in (("10.1.1.2", "10.1.2.2", 8), ("10.1.2.2", "10.1.1.2", 0))
    }
    assert len(hashes) == 1


def test_the_fragments_of_a_datagram_hash_alike():
    datagram = IP(src="10.1.1.2", dst="10.1.2.2", id=77) / UDP(sport=4000, dport=53) / (b"x" * 3000)
    pieces = fragment(datagram, fragsize=1000)
    assert len(pieces) == 4
    assert len({steering.flow_hash(bytes(p)) for p in pieces}) == 1


def test_connections_from_even_ephemeral_ports_still_spread_over_two_workers():
    # Linux gives connect() even ports: a parity-based choice would pick one worker for all.
    flows = [
        bytes(IP(src="10.1.1.2", dst="10.1.2.2") / TCP(sport=40000 + 2 * k, dport=5201))
        for k in range(16)
    ]
    chosen = [steering.flow_hash(p) % 2 for p in flows]
    assert 4 <= chosen.count(0) <= 12


def test_non_tcp_packets_are_steered_too():
    packet = bytes(IP(src="10.1.1.2", dst="10.1.2.2") / ICMP(id=9, seq=1))
    socks = group(2)
    try:
        assert receiver(socks, packet) == steering.flow_hash(packet) % 2
    finally:
        for s in socks:
            s.close()


def test_zero_workers_is_refused():
    with pytest.raises(ValueError):
        steering.program(0)
