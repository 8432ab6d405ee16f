"""Time to heal and to return (the path healer, ops/mesh/healer.py): two pyflannel VXLAN nodes
with a pod each; VXLAN between them broken in three ways in turn (UDP 8472 dropped both ways;
one way, a -> b; TCP inside VXLAN dropped both ways, ICMP passing), then mended. For each:
seconds and healer rounds (on node a) from the break until a's pod reaches b's pod again (ping
for the VXLAN drops, a TCP connection for the TCP case) with a sending over UDP, and from the
repair until a sends over VXLAN again. The daemons restart before every run, so each break is
a first one (a path that breaks again within 10 minutes is kept on UDP longer, on purpose).

    sudo python3 bench/healing.py --repeat 3 --interval 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, wait_for, write_results
from testbed import breaks, netns
from testbed.bed import Node, TestBed

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
LISTEN = (
    "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',7000));s.listen(64)\nwhile True:\n c,_=s.accept();c.close()"
)
CONNECT = (
    "import socket,sys\ntry:\n socket.create_connection((sys.argv[1],7000),timeout=0.5).close()"
    "\n print('ok')\nexcept OSError:\n print('no')"
)
SCENARIOS = {
    "udp 8472 dropped both ways": ((0, 1), (1, 0)),
    "udp 8472 dropped one way (a -> b)": ((0, 1),),
    "tcp inside vxlan dropped both ways": ((0, 1), (1, 0)),
}


def rule(dst: Node, tcp_only: bool) -> list[str]:
    return breaks.vxlan_out(dst.underlay_ip, *(breaks.INNER_TCP if tcp_only else ()))


def via(node: Node, peer: Node) -> str:
    rows = {r["subnet"]: r for r in node.status()["peers"]}
    heal = rows[str(peer.subnet)].get("heal") or {}
    return "udp" if heal.get("via") == "udp" and not heal.get("trying") else heal.get("via", "")


def rounds(node: Node) -> int:
    return node.status()["mesh"]["path_rounds"]


def reaches(a: Node, b: Node, tcp: bool) -> bool:
    if tcp:
        out = netns.run(["python3", "-c", CONNECT, str(b.pod_ip)], ns=a.pod_ns, check=False)
        return out.stdout.strip() == "ok"
    return a.ping(b.pod_ip, count=1, wait=0.5).received == 1


def one_run(bed: TestBed, name: str, args: tuple[str, ...], interval: float) -> dict:
    a, b = bed.nodes
    for node in (a, b):
        node.stop()
        node.start(*args)
    for node in (a, b):
        node.wait_ready()
    wait_for(lambda: via(a, b) == "vxlan" and via(b, a) == "vxlan", interval * 10)
    tcp = name.startswith("tcp")
    applied = []
    r0, t0 = rounds(a), time.monotonic()
    for s, d in SCENARIOS[name]:
        src, dst = bed.nodes[s], bed.nodes[d]
        src.run("iptables", "-I", *rule(dst, tcp))
        applied.append((src, rule(dst, tcp)))
    heal_s = wait_for(lambda: via(a, b) == "udp" and reaches(a, b, tcp), interval * 20)
    heal_rounds = rounds(a) - r0
    outage = time.monotonic() - t0
    for node, r in applied:
        node.run("iptables", "-D", *r)
    r1 = rounds(a)
    back_s = wait_for(lambda: via(a, b) == "vxlan", interval * 20)
    return {
        "heal_s": heal_s,
        "heal_rounds": heal_rounds,
        "outage_s": outage,
        "back_s": back_s,
        "back_rounds": rounds(a) - r1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0, help="--probe-interval (s)")
    opts = parser.parse_args()
    args = ("--reconcile-interval=5", f"--probe-interval={opts.interval:g}")
    results: dict[str, list[dict]] = {name: [] for name in SCENARIOS}
    with TestBed(hosts=2) as bed:
        bed.put_config(CONFIG)
        for node in bed.nodes:
            node.start(*args)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        listener = subprocess.Popen(
            ["ip", "netns", "exec", bed.nodes[1].pod_ns, "python3", "-c", LISTEN]
        )
        try:
            for _ in range(opts.repeat):
                for name in SCENARIOS:
                    run = one_run(bed, name, args, opts.interval)
                    results[name].append(run)
                    print(name, run, flush=True)
        finally:
            listener.kill()
            listener.wait()
    rows, data = [], {}
    for name, runs in results.items():
        s = {k: summary([r[k] for r in runs]) for k in runs[0]}
        data[name] = {"runs": runs, "summary": s}
        rows.append(
            [
                name,
                f"{s['heal_s']['median']:.1f} s / {s['heal_rounds']['median']:g}",
                f"{s['heal_rounds']['max']:g}",
                f"{s['back_s']['median']:.1f} s / {s['back_rounds']['median']:g}",
                f"{s['back_rounds']['max']:g}",
            ]
        )
    text = table(
        [
            f"break (probe interval {opts.interval:g} s, {opts.repeat} runs)",
            "to heal: median s / rounds",
            "rounds, worst",
            "to return: median s / rounds",
            "rounds, worst",
        ],
        rows,
    )
    write_results(
        f"healing-{opts.interval:g}s", {"interval": opts.interval, "scenarios": data}, text
    )
    print(text)


if __name__ == "__main__":
    main()
