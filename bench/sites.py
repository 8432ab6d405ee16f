"""Sites, NAT and relays (--site), measured on the bed of tests/e2e/test_sites.py: "de" (two
nodes with a private LAN and public addresses), an office node behind NAT ("oslo"), a home
node behind a NAT that maps each flow to a random port ("home"). Per run, a fresh bed:

- join: a second office node starts behind the office's router; seconds from its start until
  its pod first reaches the pod of each other node (the office's, de's, home's);
- renumber: the office router gets another public address and forgets its flows; seconds
  until every pair of pods reaches each other again;
- relay against direct: oslo <-> home through the relay (home's NAT keeps them apart), then
  direct (home's router made to keep ports): iperf3 TCP throughput, the median RTT of 50 pings,
  and the relay's CPU (its wireguard-go) per GB relayed, side by side with de <-> oslo direct.

    sudo python3 bench/sites.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, wait_for, write_results
from testbed.iperf import iperf, received_bits_per_second
from testbed.nat import SitesBed

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
ARGS = ("--reconcile-interval=5",)
SECONDS = 5  # per iperf3 run


def reaches(a, b) -> bool:
    return a.ping(b.pod_ip, count=1, wait=0.5).received == 1


def all_pairs(nodes) -> bool:
    return all(reaches(a, b) for a in nodes for b in nodes if a is not b)


def placement(a, b) -> dict:
    return {r["subnet"]: r for r in a.status()["peers"]}[str(b.subnet)].get("placement") or {}


def wireguard_cpu(node) -> float:
    """CPU seconds of the node's site link wireguard-go so far (utime + stime): the daemon's
    own child, every node's wireguard-go being in one PID namespace."""
    (pid,) = [
        p for p in node.all_children() if b"wireguard-go" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def path(a, b, relay=None) -> dict:
    """Throughput, RTT and (through a relay) the relay's CPU per GB, a -> b."""
    cpu0 = wireguard_cpu(relay) if relay is not None else 0.0
    result = iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds=SECONDS)
    cpu = wireguard_cpu(relay) - cpu0 if relay is not None else float("nan")
    bps = received_bits_per_second(result) or float("nan")
    gigabytes = bps * SECONDS / 8 / 1e9
    rtts = a.ping(b.pod_ip, count=50, interval=0.02).rtts
    return {
        "gbit_s": bps / 1e9,
        "rtt_ms": statistics.median(rtts) if rtts else float("nan"),
        "relay_cpu_s_per_gb": cpu / gigabytes if relay is not None and gigabytes else float("nan"),
    }


def one_run() -> dict:
    with SitesBed(
        hosts=5,
        sites={"de": {1, 2}, "oslo": {3, 5}, "home": {4}},
        natted={3, 4, 5},
        behind={5: 3},
        symmetric=frozenset({4}),
    ) as bed:
        bed.put_config(CONFIG)
        de1, de2, oslo, home, joiner = bed.nodes
        for node in bed.nodes[:4]:
            node.start(*ARGS, *bed.site_args(node), private_run=True)
        for node in bed.nodes[:4]:
            node.wait_ready()
            node.add_pod()
        relayed = wait_for(lambda: placement(oslo, home).get("path") == "relayed", 60)
        (relay,) = [n for n in (de1, de2) if str(n.subnet) == placement(oslo, home).get("via")]
        out = {
            "relay_formed_s": relayed,
            "direct": path(de1, oslo),
            "relayed": path(oslo, home, relay),
        }
        bed.open_nat(4)
        out["back_to_direct_s"] = wait_for(
            lambda: placement(oslo, home).get("path") == "across sites", 120
        )
        out["punched"] = path(oslo, home)
        started = time.monotonic()
        joiner.start(*ARGS, *bed.site_args(joiner), private_run=True)
        joiner.wait_ready()
        joiner.add_pod()
        for name, target in (("office", oslo), ("de", de1), ("home", home)):
            wait_for(lambda t=target: reaches(joiner, t), 60)
            out[f"join_to_{name}_s"] = time.monotonic() - started
        t0 = time.monotonic()
        bed.renumber(3, IPv4Address("198.51.100.113"))
        wait_for(lambda: all_pairs(bed.nodes), 120)
        out["renumber_s"] = time.monotonic() - t0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    runs = []
    for i in range(opts.runs):
        run = one_run()
        runs.append(run)
        print(f"run {i + 1}: {run}", flush=True)
    flat = [
        ("a new office node: its first packet to the office node (s)", "join_to_office_s"),
        ("... to a de node (s)", "join_to_de_s"),
        ("... to the home node (s)", "join_to_home_s"),
        ("the office line renumbered: every pair back (s)", "renumber_s"),
        ("home <-> oslo: relayed after start (s)", "relay_formed_s"),
        ("home's NAT made to keep ports: direct again after (s)", "back_to_direct_s"),
    ]
    rows = [[label, f"{summary([r[key] for r in runs])['median']:.1f}"] for label, key in flat]
    for label, key in (
        ("de -> oslo, direct (site link)", "direct"),
        ("oslo -> home, through the relay", "relayed"),
        ("oslo -> home, direct through both NATs", "punched"),
    ):
        s = {m: summary([r[key][m] for r in runs])["median"] for m in runs[0][key]}
        rows.append(
            [
                label,
                f"{s['gbit_s']:.2f} Gbit/s, RTT {s['rtt_ms']:.2f} ms"
                + (
                    f", relay CPU {s['relay_cpu_s_per_gb']:.0f} s/GB"
                    if s["relay_cpu_s_per_gb"] == s["relay_cpu_s_per_gb"]
                    else ""
                ),
            ]
        )
    text = table([f"sites ({opts.runs} runs, medians)", "measured"], rows)
    write_results("sites", {"runs": runs}, text)
    print(text)


if __name__ == "__main__":
    main()
