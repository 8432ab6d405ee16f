"""Flushed rules back: pyflannel (iptables mode on Debian's iptables-nft, and nftables mode)
against upstream flanneld v0.20.2 (iptables; it has no nftables mode), on one bed, alternating,
repeated.

    sudo python3 bench/rules_repair.py [--repeat 5]

Two nodes on a vxlan network with --ip-masq, each at its default resync period (5 s for
both); in iptables mode the hosts' FORWARD policy is DROP (as Docker sets it), so a flush cuts
the path between the pods until the forward rules are back. Per trial on node 1:
``iptables -F; iptables -t nat -F`` (nftables mode: ``nft flush ruleset``; a firewall reload
``iptables-restore`` of a set without our rules as a second case), then

- ms until the rules are back: the kernel's own announcement of their addition (``nft monitor``
  in the node), the later of the masquerade and the forward rules;
- ms until the pod path answers again: a ping from node 2's pod to node 1's every 5 ms, its
  first reply after the ones lost (iptables mode; in nftables mode the flush does not cut
  it).

Medians (and the spread); writes bench/results/rules_repair.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import installed_python, summary, table, write_results
from testbed.bed import Node, TestBed
from testbed.upstream import launch_upstream, upstream_flanneld

CONFIG = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
FLUSH = [["iptables", "-F"], ["iptables", "-t", "nat", "-F"]]
NFT_FLUSH = [["nft", "flush", "ruleset"]]
RELOAD = (
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
)
# What each mode's restored rules look like in `nft monitor` (the chains they are added to).
MARKS = {
    "iptables": ("FLANNEL-POSTRTG", "FLANNEL-FWD"),
    "nftables": ("flannel-ipv4 postrtg", "flannel-ipv4 forward"),
}
CASES = [  # (implementation, mode, what is done)
    ("pyflannel", "iptables", "flush"),
    ("upstream", "iptables", "flush"),
    ("pyflannel", "iptables", "reload"),
    ("upstream", "iptables", "reload"),
    ("pyflannel", "nftables", "flush"),
]


class Lines:
    """A process's output lines, each stamped with the monotonic time it arrived."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def first_after(self, t0: float, *needles: str) -> float | None:
        """The time of the first line after ``t0`` holding every needle."""
        for stamp, line in list(self.lines):
            if stamp >= t0 and all(n in line for n in needles):
                return stamp
        return None

    def back_after_loss(self, t0: float) -> float | None:
        """Ping: the time of the first reply after ``t0`` that follows lost ones (icmp_seq
        missing); ``t0`` itself if none was lost (the path was never cut)."""
        previous = None
        for stamp, line in list(self.lines):
            match = re.search(r"icmp_seq=(\d+)", line)
            if match is None:
                continue
            seq = int(match.group(1))
            if stamp >= t0 and previous is not None and seq > previous + 1:
                return stamp
            previous = seq
        return None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def start(node: Node, impl: str) -> None:
    node.subnet_file.unlink(missing_ok=True)
    if impl == "pyflannel":
        node.start("--ip-masq", "--probe-interval=0")
    else:
        launch_upstream(node, "-ip-masq")
    deadline = time.monotonic() + 30
    while not node.subnet_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(node.log()[-2000:])
        time.sleep(0.01)


def trial(bed: TestBed, mode: str, what: str, monitor: Lines, ping: Lines) -> tuple[float, float]:
    """(ms until the rules are back, ms until the pod path answers) after one flush."""
    a = bed.nodes[0]
    time.sleep(1.0)  # steady: rules in place, replies flowing
    t0 = time.monotonic()
    if what == "reload":
        subprocess.run(["ip", "netns", "exec", a.ns, "iptables-restore"], input=RELOAD, text=True)
    else:
        for cmd in NFT_FLUSH if mode == "nftables" else FLUSH:
            a.run(*cmd)
    masq, fwd = MARKS[mode]
    rules = float("nan")
    deadline = t0 + 15
    while time.monotonic() < deadline:
        back = [monitor.first_after(t0, "add rule", mark) for mark in (masq, fwd)]
        if math.isnan(rules) and all(b is not None for b in back):
            rules = (max(b for b in back if b is not None) - t0) * 1000
        if not math.isnan(rules) and time.monotonic() > t0 + rules / 1000 + 0.5:
            break
        time.sleep(0.01)
    path = float("nan")
    if mode == "iptables":
        reply = ping.back_after_loss(t0)
        if reply is not None:
            path = (reply - t0) * 1000
        elif ping.first_after(t0, "bytes from") is not None:
            path = 0.0  # nothing lost: the path was never cut
    return rules, path


def run_case(bed: TestBed, impl: str, mode: str, what: str, repeat: int) -> dict:
    a, b = bed.nodes
    bed.put_config({**CONFIG, "EnableNFTables": mode == "nftables"})
    for node in bed.nodes:
        node.run("iptables", "-P", "FORWARD", "DROP" if mode == "iptables" else "ACCEPT")
        start(node, impl)
    for node in bed.nodes:
        node.add_pod()
    monitor = Lines(["ip", "netns", "exec", a.ns, "nft", "monitor", "rules"])
    ping = Lines(["ip", "netns", "exec", b.pod_ns, "ping", "-n", "-i", "0.005", str(a.pod_ip)])
    try:
        deadline = time.monotonic() + 30  # the pod path works before anything is flushed
        while ping.first_after(time.monotonic() - 0.2, "bytes from") is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{impl}: no pod path before the flush:\n{a.log()[-2000:]}")
            time.sleep(0.1)
        results = [trial(bed, mode, what, monitor, ping) for _ in range(repeat)]
    finally:
        monitor.close()
        ping.close()
        for node in bed.nodes:
            node.stop()
            node.proc = None
            node.run("nft", "flush", "ruleset", check=False)
            node.run("ip", "link", "del", "flannel.1", check=False)
        # The next case may be the other implementation: it would rightly refuse a lease of
        # its public IP with another VTEP MAC (pyflannel's clone check).
        bed.etcd.ctl("del", "/coreos.com/network/subnets/", "--prefix")
    rules = [r for r, _ in results]
    paths = [p for _, p in results]
    return {"rules_back_ms": summary(rules), "pod_path_back_ms": summary(paths), "raw": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dev-tree", action="store_true", help="this tree, not the wheel")
    args = parser.parse_args()
    assert upstream_flanneld() is not None, "no upstream flanneld (../shared/anchors)"
    if not args.dev_tree:
        TestBed.python = installed_python()
    out: dict = {}
    with TestBed(hosts=2) as bed:
        for impl, mode, what in CASES:
            key = f"{impl} {mode} {what}"
            out[key] = run_case(bed, impl, mode, what, args.repeat)
            print(key, out[key]["rules_back_ms"], out[key]["pod_path_back_ms"], flush=True)

    def cell(s: dict) -> str:
        if not s.get("n"):
            return "-"
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    rows = [[key, cell(r["rules_back_ms"]), cell(r["pod_path_back_ms"])] for key, r in out.items()]
    up = out["upstream iptables flush"]["rules_back_ms"].get("median", float("nan"))
    ours = out["pyflannel iptables flush"]["rules_back_ms"].get("median", float("nan"))
    text = table(["flush on node 1", "rules back, ms", "pod path back, ms"], rows)
    text += f"\n\nrules back after a flush: pyflannel / upstream = {ours / up:.3f}\n"
    print(text)
    write_results("rules_repair", {"repeat": args.repeat, "cases": out}, text)


if __name__ == "__main__":
    main()
