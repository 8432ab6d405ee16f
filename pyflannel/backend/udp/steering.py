"""Which worker receives a datagram: a classic BPF program for the workers' ``SO_REUSEPORT``
socket group, keyed by the inner flow.

Every datagram from one peer has the same outer addresses and ports (flannel sends from and
to port 8285), so the kernel's own reuseport hash would hand all of a peer's traffic to one
worker. The program reads the inner IPv4 header instead (the kernel runs it with the packet
data starting at the UDP payload) and picks socket ``flow_hash(inner) % workers``, where the
hash is symmetric: both directions of a TCP connection land on the same worker.

``flow_hash`` is the same function in Python, the reference the kernel test checks against.
A datagram too short for the program's loads makes it return 0: junk goes to worker 0.
"""

from __future__ import annotations

import socket
import struct

from pyflannel.kernel import cbpf
from pyflannel.kernel.cbpf import LD_H_IND as _LD_H_IND
from pyflannel.kernel.cbpf import LDX_MSH as _LDX_MSH

# the other classic BPF opcodes it uses (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # A = P[k : 4]
_ST = 0x02  # M[k] = A
_LDX_MEM = 0x01 | 0x60  # X = M[k]
_TAX = 0x07 | 0x00  # X = A
_ADD_X = 0x04 | 0x00 | 0x08
_XOR_X = 0x04 | 0xA0 | 0x08
_RSH_K = 0x04 | 0x70
_MOD_K = 0x04 | 0x90
_RET_A = 0x06 | 0x10


def flow_hash(packet: bytes) -> int:
    """The program's function: ``((sport + dport) >> 1) + fold(src ^ dst)``, 32-bit.

    The ports are summed, not concatenated, so a flow and its replies agree; the shift drops
    the parity that Linux's even ephemeral ports would make constant."""
    ihl = 4 * (packet[0] & 0x0F)
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    addresses = int.from_bytes(packet[12:16], "big") ^ int.from_bytes(packet[16:20], "big")
    folded = addresses ^ (addresses >> 16)
    return (((sport + dport) & 0xFFFFFFFF) >> 1) + folded & 0xFFFFFFFF


def program(workers: int) -> list[tuple[int, int, int, int]]:
    """The instructions returning ``flow_hash(payload) % workers``."""
    if workers < 1:
        raise ValueError("at least one worker")
    return [
        (_LDX_MSH, 0, 0, 0),
        (_LD_H_IND, 0, 0, 0),  # source port
        (_ST, 0, 0, 0),
        (_LD_H_IND, 0, 0, 2),  # destination port
        (_LDX_MEM, 0, 0, 0),
        (_ADD_X, 0, 0, 0),
        (_RSH_K, 0, 0, 1),
        (_ST, 0, 0, 1),  # M[1] = (sport + dport) >> 1
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
