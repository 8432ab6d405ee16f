"""``python -m testbed.inject`` (run inside a namespace): send UDP datagrams with
any source address, e.g. spoofed peers or garbage for the UDP backend. Reads a JSON list of
{"src", "dst", "sport", "dport", "payload_hex"} on stdin. Test use only: imports scapy."""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    from scapy.layers.inet import IP, UDP
    from scapy.sendrecv import send

    datagrams = json.load(sys.stdin)
    packets = [
        IP(src=d["src"], dst=d["dst"])
        / UDP(sport=d["sport"], dport=d["dport"])
        / bytes.fromhex(d["payload_hex"])
        for d in datagrams
    ]
    send(packets, verbose=False)
    print(len(packets))
    return 0


def inject(ns: str, datagrams: list[dict]) -> int:
    """Send ``datagrams`` from namespace ``ns``; how many were sent."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "testbed.inject"],
        input=json.dumps(datagrams),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    raise SystemExit(main())
