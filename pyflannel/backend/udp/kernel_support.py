"""Whether this kernel takes what the UDP backend's fast path asks of it: a TUN device with
virtio-net headers and TSO offloads (TCP super-packets handed over whole), ``UDP_SEGMENT``
sends and ``UDP_GRO`` receives. The daemon finds out by using them (each half turns itself off,
logged, when refused); ``pyflannel doctor`` asks before, by trying each once here, in a
throwaway namespace: ``python3 -m pyflannel.backend.udp.kernel_support`` prints one JSON object,
feature -> null (taken) or the kernel's refusal."""

from __future__ import annotations

import json
import os
import socket
import struct

from pyflannel.backend.udp import tun
from pyflannel.backend.udp.forwarder import UDP_GRO, UDP_SEGMENT

FEATURES = ("tun offloads", "UDP_SEGMENT", "UDP_GRO")


def fast_path_support() -> dict[str, str | None]:
    """Each of FEATURES -> None if this kernel took it, else why not. Makes a TUN device (gone
    when its fd closes) and loopback sockets: run it where a device may come and go."""
    found: dict[str, str | None] = {}
    try:
        fd = tun.open_tun("pfdoctor1", persist=False, vnet_hdr=True)
    except OSError as e:
        found["tun offloads"] = str(e)
    else:
        try:
            tun.set_offload(fd, tun.TUN_F_CSUM | tun.TUN_F_TSO4)
            found["tun offloads"] = None
        except OSError as e:
            found["tun offloads"] = f"TUNSETOFFLOAD refused: {e.strerror}"
        finally:
            os.close(fd)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        try:
            receiver.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            found["UDP_GRO"] = None
        except OSError as e:
            found["UDP_GRO"] = f"refused: {e.strerror}"
        try:  # two 100-byte datagrams in one send
            segment = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))]
            sender.sendmsg([bytes(200)], segment, 0, receiver.getsockname())
            receiver.recv(65536)
            found["UDP_SEGMENT"] = None
        except OSError as e:
            found["UDP_SEGMENT"] = f"refused: {e.strerror}"
    return {feature: found[feature] for feature in FEATURES}


if __name__ == "__main__":
    print(json.dumps(fast_path_support()))
