"""Start-up and footprint: time from `pyflannel run` to subnet.env written (cold: no device,
no lease; warm: restart with both in place), time to "ready", and RSS at idle.

    sudo python3 bench/startup.py [--runs 5]

Writes bench/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, table, write_results
from testbed.bed import TestBed


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def timed_start(node) -> tuple[float, float]:
    """Seconds from exec to subnet.env present, and to the daemon's ready line."""
    node.subnet_file.unlink(missing_ok=True)
    mark = len(node.log())
    t0 = time.monotonic()
    node.start()
    while not node.subnet_file.exists():
        if time.monotonic() - t0 > 30:
            raise TimeoutError(node.log()[-2000:])
        time.sleep(0.002)
    t_file = time.monotonic() - t0
    node.wait_log(r"ready in", after=mark)
    return t_file, time.monotonic() - t0


def import_time() -> float:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pyflannel.app.daemon"],
        capture_output=True,
        text=True,
    ).stderr
    last = [line for line in out.splitlines() if "pyflannel.app.daemon" in line][-1]
    return int(last.split("|")[1]) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cold, warm, cold_ready, warm_ready, rss = [], [], [], [], []
    with TestBed(hosts=3) as bed:
        bed.put_config()
        for node in bed.nodes[1:]:
            node.start()
        node = bed.nodes[0]
        for _ in range(args.runs):
            # Cold: no device, no lease, no subnet file.
            node.run("ip", "link", "del", "flannel.1", check=False)
            for key in [k for k, v in bed.leases().items() if '"198.51.100.1"' in v]:
                bed.etcd.ctl("del", key)
            t_file, t_ready = timed_start(node)
            cold.append(t_file)
            cold_ready.append(t_ready)
            time.sleep(2)
            rss.append(rss_mb(node.pid))
            node.stop()
            # Warm: restart with device and lease in place.
            t_file, t_ready = timed_start(node)
            warm.append(t_file)
            warm_ready.append(t_ready)
            node.stop()
    imp = import_time()
    s = {
        k: summary(v)
        for k, v in {
            "cold_subnet_env_s": cold,
            "warm_subnet_env_s": warm,
            "cold_ready_s": cold_ready,
            "warm_ready_s": warm_ready,
            "rss_idle_2_peers_mb": rss,
        }.items()
    }
    rows = [[name, s[name]["median"], s[name]["min"], s[name]["max"]] for name in s]
    text = table(["measure", "median", "min", "max"], rows)
    text += f"\n\nimport pyflannel.app.daemon: {imp:.3f} s; runs: {args.runs}"
    print(text)
    write_results(
        "startup", {**s, "import_s": imp, "raw": {"cold": cold, "warm": warm, "rss": rss}}, text
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
