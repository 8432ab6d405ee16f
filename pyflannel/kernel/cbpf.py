"""Installing a classic BPF program on a socket (``struct sock_fprog``): the UDP workers'
reuseport steering and the path prober's answer filter."""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>: filter what the socket receives
SO_ATTACH_REUSEPORT_CBPF = 51  # choose the reuseport group member

INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k

# opcodes both programs use (linux/filter.h, linux/bpf_common.h)
LDX_MSH = 0x01 | 0x10 | 0xA0  # X = 4 * (P[k] & 0xf): the IPv4 header length
LD_H_IND = 0x00 | 0x08 | 0x40  # A = P[X + k : 2]
JEQ_K = 0x05 | 0x10  # jump jt if A == k, else jf
RET_K = 0x06  # accept k bytes (0: drop)


def attach(sock: socket.socket, option: int, insns: list[tuple[int, int, int, int]]) -> None:
    """Install ``insns`` with ``option``; OSError if the kernel refuses them."""
    code = b"".join(INSN.pack(*insn) for insn in insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(insns), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)
