"""Which worker receives a datagram: a classic BPF program for the workers' ``SO_REUSEPORT``
socket group, keyed by the inner flow.

Every datagram from one peer has the same outer addresses and ports (flannel sends from and
to port 8285), so the kernel's own reuseport hash would hand all of a peer's traffic to one
worker. The program reads the inner IPv4 header instead (the kernel runs it with the packet
data starting at the UDP payload) and picks socket ``flow_hash(inner) % workers``, where the
hash is symmetric: both directions of a TCP connection land on the same worker.

Ports count only where the kernel's own flow hash reads them (TCP, UDP, DCCP, SCTP, UDP-Lite,
and not in a fragment): the TUN sends a flow's packets to the queue that last wrote one of
that flow, keyed by that hash. An ICMP echo's "ports" would be its type and checksum, new with
every sequence number: its request reached one worker and the reply the kernel makes in that
very TUN write went to the queue of the previous request's worker, which had to be woken (a
quarter of the replies with two workers, measured). Without ports, a pair of pods' ICMP and
fragments stay on one worker, as they do in the kernel's choice of queue.

``flow_hash`` is the same function in Python, the reference the kernel test checks against.
A datagram too short for the program's loads makes it return 0: junk goes to worker 0.
"""

from __future__ import annotations

import socket
import struct

from pyflannel.kernel import cbpf
from pyflannel.kernel.cbpf import JEQ_K as _JEQ_K
from pyflannel.kernel.cbpf import LD_H_IND as _LD_H_IND
from pyflannel.kernel.cbpf import LDX_MSH as _LDX_MSH

# the other classic BPF opcodes it uses (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # A = P[k : 4]
_LD_H_ABS = 0x00 | 0x08 | 0x20  # A = P[k : 2]
_LD_B_ABS = 0x00 | 0x10 | 0x20  # A = P[k]
_LD_IMM = 0x00 | 0x00 | 0x00  # A = k
_JA = 0x05 | 0x00  # jump k
_JSET_K = 0x05 | 0x40  # jump jt if A & k, else jf
_ST = 0x02  # M[k] = A
_LDX_MEM = 0x01 | 0x60  # X = M[k]
_TAX = 0x07 | 0x00  # X = A
_ADD_X = 0x04 | 0x00 | 0x08
_XOR_X = 0x04 | 0xA0 | 0x08
_RSH_K = 0x04 | 0x70
_MOD_K = 0x04 | 0x90
_RET_A = 0x06 | 0x10

# The protocols whose ports the kernel's flow dissector reads (proto_ports_offset() == 0).
PORTED_PROTOCOLS = (6, 17, 33, 132, 136)  # TCP, UDP, DCCP, SCTP, UDP-Lite
_FRAGMENT = 0x3FFF  # more-fragments flag and fragment offset


def flow_hash(packet: bytes) -> int:
    """The program's function: ``((sport + dport) >> 1) + fold(src ^ dst)``, 32-bit, with
    ports 0 outside PORTED_PROTOCOLS and in fragments.

    The ports are summed, not concatenated, so a flow and its replies agree; the shift drops
    the parity that Linux's even ephemeral ports would make constant."""
    sport = dport = 0
    if packet[9] in PORTED_PROTOCOLS and not int.from_bytes(packet[6:8], "big") & _FRAGMENT:
        sport, dport = struct.unpack_from("!HH", packet, 4 * (packet[0] & 0x0F))
    addresses = int.from_bytes(packet[12:16], "big") ^ int.from_bytes(packet[16:20], "big")
    folded = addresses ^ (addresses >> 16)
    return (((sport + dport) & 0xFFFFFFFF) >> 1) + folded & 0xFFFFFFFF


def program(workers: int) -> list[tuple[int, int, int, int]]:
    """The instructions returning ``flow_hash(payload) % workers``."""
    if workers < 1:
        raise ValueError("at least one worker")
    ports = [  # A = (sport + dport) >> 1
        (_LDX_MSH, 0, 0, 0),
        (_LD_H_IND, 0, 0, 0),  # source port
        (_ST, 0, 0, 0),
        (_LD_H_IND, 0, 0, 2),  # destination port
        (_LDX_MEM, 0, 0, 0),
        (_ADD_X, 0, 0, 0),
        (_RSH_K, 0, 0, 1),
        (_JA, 0, 0, 1),  # over no_ports
    ]
    # Jumps go forward only: each protocol test jumps to the fragment test on a match; the
    # last one's miss, and a fragment, jump over the ports to no_ports (A = 0).
    to_no_ports = 2 + len(ports)  # from the last protocol test, over the fragment test
    last = len(PORTED_PROTOCOLS) - 1
    return [
        (_LD_B_ABS, 0, 0, 9),  # protocol
        *[
            (_JEQ_K, last - i, 0 if i < last else to_no_ports, proto)
            for i, proto in enumerate(PORTED_PROTOCOLS)
        ],
        (_LD_H_ABS, 0, 0, 6),  # flags and fragment offset
        (_JSET_K, len(ports), 0, _FRAGMENT),
        *ports,
        (_LD_IMM, 0, 0, 0),  # no_ports
        (_ST, 0, 0, 1),  # M[1] = the ports' part of the hash
        (_LD_W_ABS, 0, 0, 12),
        (_TAX, 0, 0, 0),
        (_LD_W_ABS, 0, 0, 16),
        (_XOR_X, 0, 0, 0),
        (_TAX, 0, 0, 0),
        (_RSH_K, 0, 0, 16),
        (_XOR_X, 0, 0, 0),  # A = src ^ dst folded
        (_LDX_MEM, 0, 0, 1),
        (_ADD_X, 0, 0, 0),
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]


def attach(sock: socket.socket, workers: int) -> None:
    """Install the program on ``sock``'s reuseport group (any member will do). Raises OSError
    if the kernel refuses it; the group then falls back to the kernel's own hash."""
    cbpf.attach(sock, cbpf.SO_ATTACH_REUSEPORT_CBPF, program(workers))
