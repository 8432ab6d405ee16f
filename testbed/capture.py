"""``python -m testbed.capture IFACE SECONDS``: sniff UDP on IFACE (run it inside a
namespace) and print one JSON line per datagram, with the VXLAN header and inner IPv4 decoded.
Prints ``READY`` once the socket is open. Test and diagnostic use only: imports scapy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def describe(pkt) -> dict | None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN

    if IP not in pkt or UDP not in pkt:
        return None
    ip, udp = pkt[IP], pkt[UDP]
    record = {
        "src": ip.src,
        "dst": ip.dst,
        "sport": udp.sport,
        "dport": udp.dport,
        "ip_len": ip.len,
        "frame_len": len(pkt),
    }
    if VXLAN in pkt:
        record["vni"] = pkt[VXLAN].vni
        inner = pkt[VXLAN].payload
    else:
        record["payload_hex"] = bytes(udp.payload).hex()  # e.g. to show it is not cleartext
        inner = udp.payload
        try:
            inner = IP(bytes(inner))
        except Exception:
            inner = None
    if inner is not None and IP in inner:
        record.update(
            inner_src=inner[IP].src,
            inner_dst=inner[IP].dst,
            inner_proto=inner[IP].proto,
            inner_len=inner[IP].len,
        )
    return record


def main(argv: list[str]) -> int:
    # Layers must be registered before sniffing, or frames stay undecoded raw packets.
    import scapy.layers.inet
    import scapy.layers.l2
    import scapy.layers.vxlan  # noqa: F401
    from scapy.sendrecv import sniff

    iface, seconds = argv[0], float(argv[1])
    packets = sniff(
        iface=iface,
        timeout=seconds,
        store=True,
        lfilter=lambda p: p.haslayer("UDP"),
        started_callback=lambda: print("READY", flush=True),
    )
    for pkt in packets:
        record = describe(pkt)
        if record:
            print(json.dumps(record))
    return 0


def start_capture(ns: str, iface: str, seconds: float) -> subprocess.Popen:
    """Start a capture in namespace ``ns``; returns once it is listening."""
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "testbed.capture",
            iface,
            str(seconds),
        ],
        cwd=Path(__file__).resolve().parent.parent,  # testbed/ is not installed: run from the tree
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"capture did not start: {line}{proc.stderr.read()}")
    return proc


def finish_capture(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"capture failed: {err}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
