"""iperf3 between two namespaces: a one-shot server, one client run, the parsed result."""

from __future__ import annotations

import json
import subprocess
import time

from testbed import netns


def iperf(
    client_ns: str,
    server_ns: str,
    server_ip: str,
    seconds: float = 2,
    streams: int = 1,
    reverse: bool = False,
) -> dict:
    """Run one iperf3 TCP test; its JSON result ({} if it produced none)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        cmd = ["iperf3", "-c", server_ip, "-t", str(seconds), "-P", str(streams), "-J"]
        if reverse:
            cmd.append("-R")
        out = netns.run(cmd, ns=client_ns, check=False, timeout=seconds + 30).stdout
        try:
            return json.loads(out)
        except ValueError:
            return {}
    finally:
        server.kill()
        server.wait()


def received_bits_per_second(result: dict) -> float:
    return result.get("end", {}).get("sum_received", {}).get("bits_per_second", 0.0)
