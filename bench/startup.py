"""Start-up and footprint: time from exec of `pyflannel run` to subnet.env written (cold: no
device, no lease; warm: restart with both in place), to "ready", RSS at idle, and where the
time goes: the daemon logs its start-up steps (pyflannel/app/timeline.py) and this script
takes each step's median distance from the previous one, next to what the same machine takes
for the floors (the interpreter alone, then with the imports the steps cannot do without).

    sudo python3 bench/startup.py [--runs 7] [--dev-tree] [--profile 6]

pyflannel runs as installed (this tree's wheel in a virtual environment, bench/common.py's
``installed_python``); ``--dev-tree`` runs this tree through the interpreter running the script
instead (with the editable install's import finder and whatever .pth files the machine has).

``--profile N``: N more cold starts under py-spy (2,000 samples/s), and where their CPU went:
asyncio's import, dataclass creation, other imports, the netlink thread, child processes, the
rest (ms per start; each sample counted in the first category its stack falls into).

Writes bench/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compiled, installed_python, summary, table, write_results
from testbed.bed import TestBed

ROOT = Path(__file__).resolve().parent.parent
STEPS_LINE = re.compile(r"start-up steps: (.*)")
# What each step covers (pyflannel/app/timeline.py, app/daemon.py).
MEANING = {
    "python": "the interpreter, site (.pth files), pyflannel/__main__",
    "imports": "imports: pyflannel.app.cli, .daemon and all they use",
    "options": "flags and environment parsed, logging set up, event loop",
    "endpoint": "health endpoint listening",
    "config": "network config read from etcd (first connection)",
    "interface": "external interface chosen (netlink thread started)",
    "backend": "VXLAN device created or found",
    "lease": "lease acquired (list, grant, transaction)",
    "assign": "device address and MTU set",
    "rules": "iptables rules checked/added",
    "subnet.env": "subnet.env written",
}
# Floors on this machine: the same interpreter, doing nothing / importing what any asyncio
# daemon must import / and what pyroute2's IPRoute would add (pyflannel no longer imports it).
FLOORS = {
    "interpreter, no site": ["-S", "-c", "pass"],
    "interpreter with site": ["-c", "pass"],
    "+ asyncio, logging, json": ["-c", "import asyncio, logging, json"],
    "(+ pyroute2's IPRoute, not used)": [
        "-c",
        "import asyncio, logging, json; from pyroute2.iproute.linux import IPRoute",
    ],
    "+ all of pyflannel run's imports": ["-c", "import pyflannel.app.cli, pyflannel.app.daemon"],
}


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def timed_start(node) -> tuple[float, float, dict[str, float]]:
    """Seconds from exec to subnet.env present and to ready; ms of each start-up step."""
    node.subnet_file.unlink(missing_ok=True)
    mark = len(node.log())
    t0 = time.time()
    node.start("-v", "1", "--probe-interval=0")
    while not node.subnet_file.exists():
        if time.time() - t0 > 30:
            raise TimeoutError(node.log()[-2000:])
        time.sleep(0.001)
    t_file = time.time() - t0
    match = node.wait_log(STEPS_LINE.pattern, after=mark)
    steps: dict[str, float] = {}
    previous = t0
    for item in match.group(1).split():
        name, _, at = item.partition("=")
        steps[name] = (float(at) - previous) * 1000
        previous = float(at)
    ready = previous - t0
    return t_file, ready, steps


def make_cold(node) -> None:
    """No device and no lease of this node's left: its next start is a cold one."""
    node.run("ip", "link", "del", "flannel.1", check=False)
    for key in [k for k, v in node.bed.leases().items() if f'"{node.underlay_ip}"' in v]:
        node.bed.etcd.ctl("del", key)


# (category, a frame that puts a sample in it), first match wins.
CATEGORIES = (
    ("dataclass creation at import", "_process_class (dataclasses.py"),
    (
        "asyncio's import (ssl, concurrent.futures, logging, inspect)",
        "<module> (asyncio/__init__.py",
    ),
    ("site (.pth files)", "main (<frozen site>"),
    ("other imports (pyflannel's modules, h11, stdlib)", "_find_and_load (<frozen importlib"),
    ("child processes (iptables-restore)", "Popen"),
    ("netlink thread (kernel requests)", "_worker (concurrent/futures/thread.py"),
    ("event loop waiting (select)", "select (selectors.py"),
)


def profiled_starts(node, runs: int, workdir: Path) -> dict[str, float]:
    """ms of CPU per cold start, by category (CATEGORIES), sampled by py-spy."""
    totals: dict[str, float] = {}
    for i in range(runs):
        make_cold(node)
        node.subnet_file.unlink(missing_ok=True)
        out = workdir / f"profile{i}.txt"
        command = ["py-spy", "record", "-r", "2000", "--nonblocking", "-f", "raw", "-o", str(out)]
        command += ["--", *node.daemon_command("--probe-interval=0")]
        spy = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while not node.subnet_file.exists() and time.time() < deadline:
            time.sleep(0.001)
        # The daemon is py-spy's child: stop it (py-spy then writes its samples).
        for task in Path(f"/proc/{spy.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                os.kill(int(child), signal.SIGTERM)
        spy.wait(timeout=30)
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack.strip():  # no Python frame: the interpreter starting (or exiting)
                name = "the interpreter itself (no Python frame yet)"
            else:
                name = next((n for n, f in CATEGORIES if f in stack), "the daemon's own code")
            totals[name] = totals.get(name, 0.0) + int(count) / 2  # 2 samples per ms
    return {name: ms / runs for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])}


def floor_ms(python: str, args: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, *args], check=True, cwd="/")
        samples.append((time.perf_counter() - t0) * 1000)
    return summary(samples)["median"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dev-tree", action="store_true", help="not the installed wheel")
    parser.add_argument("--profile", type=int, default=0, help="cold starts under py-spy")
    args = parser.parse_args()
    compiled()
    python = sys.executable if args.dev_tree else installed_python()
    cold, warm, cold_ready, warm_ready, rss = [], [], [], [], []
    steps: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    with TestBed(hosts=3) as bed:
        bed.python = python
        bed.put_config()
        for node in bed.nodes[1:]:
            node.start()
        node = bed.nodes[0]
        for _ in range(args.runs):
            make_cold(node)  # (timed_start removes the subnet file)
            t_file, t_ready, cold_steps = timed_start(node)
            cold.append(t_file)
            cold_ready.append(t_ready)
            time.sleep(2)
            rss.append(rss_mb(node.pid))
            node.stop()
            # Warm: restart with device and lease in place.
            t_file, t_ready, warm_steps = timed_start(node)
            warm.append(t_file)
            warm_ready.append(t_ready)
            node.stop()
            for kind, taken in (("cold", cold_steps), ("warm", warm_steps)):
                for name, ms in taken.items():
                    steps[kind].setdefault(name, []).append(ms)
        cpu = profiled_starts(node, args.profile, bed.workdir) if args.profile else {}
    floors = {name: floor_ms(python, cmd, args.runs * 2) for name, cmd in FLOORS.items()}
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
    profile = [
        [
            name,
            summary(steps["cold"][name])["median"],
            summary(steps["warm"].get(name, []))["median"],
            MEANING.get(name, "after subnet.env"),
        ]
        for name in steps["cold"]
    ]
    text += "\n\nWhere the start goes (ms since the previous step, medians):\n\n"
    text += table(["step", "cold ms", "warm ms", "what it covers"], profile)
    text += "\n\nFloors on this machine (ms, process start to exit, medians):\n\n"
    text += table(["python3 ...", "ms"], [[name, ms] for name, ms in floors.items()])
    if cpu:
        text += f"\n\nWhere a cold start's CPU goes (py-spy, {args.profile} starts, ms each):\n\n"
        text += table(["category", "ms"], [[name, ms] for name, ms in cpu.items()])
    text += f"\n\nruns: {args.runs}; pyflannel run by {python}"
    print(text)
    write_results(
        "startup",
        {
            **s,
            "python": python,
            "steps": steps,
            "floors_ms": floors,
            "cpu_ms_by_category": cpu,
            "raw": {"cold": cold, "warm": warm, "rss": rss},
        },
        text,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
