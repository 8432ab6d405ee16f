"""The flannel CNI plugin's ADD and DEL latency (process start to result), against calling
the delegate `bridge` plugin directly with the config flannel would give it: what pyflannel's
plugin adds per container. As root: ``python3 bench/cni.py --runs 30``.

Each run is a fresh process, as a runtime starts one per container: one throwaway namespace
is the host, one per run the container; the two ways alternate, and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, write_results
from pyflannel.cni.install import install
from pyflannel.cni.netconf import delegate_config, parse_netconf, parse_subnet_env
from testbed import netns

CNI_DIR = "/usr/lib/cni"
ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def call(host: str, plugin: str, command: str, conf: bytes, cid: str, ns: str) -> float:
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/run/netns/{ns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": CNI_DIR,
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{host}", plugin], input=conf, env=env, capture_output=True
    )
    took = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{plugin} {command}: {proc.stdout.decode()} {proc.stderr.decode()}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pf-bench-cni-"))
    (work / "subnet.env").write_text(ENV)
    install(str(work / "bin"), None)
    flannel_conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(work / "subnet.env"),
        "dataDir": str(work / "flannel"),
        "ipam": {"dataDir": str(work / "ipam")},
    }
    bridge_conf = delegate_config(
        parse_netconf(json.dumps(flannel_conf).encode()), parse_subnet_env(ENV, "subnet.env")
    )
    ways = {
        "flannel (pyflannel)": (str(work / "bin" / "flannel"), json.dumps(flannel_conf).encode()),
        "bridge directly": (f"{CNI_DIR}/bridge", json.dumps(bridge_conf).encode()),
    }
    host = f"pf{os.getpid()}-benchcni"
    netns.create(host)
    samples: dict[str, dict[str, list[float]]] = {w: {"ADD": [], "DEL": []} for w in ways}
    try:
        for i in range(args.runs):
            for way, (plugin, conf) in ways.items():
                ns = f"pf{os.getpid()}-benchc{i}"
                netns.create(ns)
                try:
                    samples[way]["ADD"].append(call(host, plugin, "ADD", conf, f"bench{i}", ns))
                    samples[way]["DEL"].append(call(host, plugin, "DEL", conf, f"bench{i}", ns))
                finally:
                    netns.delete(ns)
    finally:
        netns.delete(host)
    result = {w: {c: summary(s) for c, s in cmds.items()} for w, cmds in samples.items()}
    base = result["bridge directly"]
    rows = [
        [
            way,
            r["ADD"]["median"],
            r["ADD"]["p99"],
            r["DEL"]["median"],
            r["DEL"]["p99"],
            r["ADD"]["median"] / base["ADD"]["median"],
        ]
        for way, r in result.items()
    ]
    text = table(
        ["plugin", "ADD ms median", "ADD ms p99", "DEL ms median", "DEL ms p99", "ADD x bridge"],
        rows,
    )
    print(text)
    write_results("cni", {"runs": args.runs, "results": result}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
