"""The churn soak: 3 VXLAN nodes, 20 leases added and 20 removed a second (300 live), etcd
killed (kill -9) at 58 s and 118 s with a compaction after the second; then, every node's
kernel against etcd: exact or not, and how long after the churn stopped it became exact.

    sudo python3 bench/churn.py [--runs 10] [--seconds 120]

Writes bench/results/churn.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table, write_results
from testbed.bed import TestBed
from testbed.churn import CONFIG, Churn, kernel_against_etcd, run_churn

SETTLE = 8.0  # seconds after the churn stops that a node may take to be exact


def one_run(seconds: float) -> dict:
    with TestBed(hosts=3) as bed:
        bed.put_config(CONFIG)
        for node in bed.nodes:
            node.start()
        for node in bed.nodes:
            node.wait_ready()
        kills = (seconds * 58 / 120, seconds * 118 / 120)
        churn = run_churn(bed, Churn(seconds=seconds, kills_at=kills))
        stopped = time.monotonic()
        exact_after: dict[int, float | None] = {n.index: None for n in bed.nodes}
        off: dict[int, tuple[int, int]] = {}
        while time.monotonic() - stopped < SETTLE and None in exact_after.values():
            for node in bed.nodes:
                if exact_after[node.index] is None:
                    missing, extra = kernel_against_etcd(bed, node)
                    off[node.index] = (len(missing), len(extra))
                    if not missing and not extra:
                        exact_after[node.index] = time.monotonic() - stopped
            time.sleep(0.2)
        return {
            "writer": churn.writer,
            "exact_after_s": exact_after,
            "off_at_end": {i: off[i] for i, t in exact_after.items() if t is None},
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.seconds))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    rows = [
        [
            i + 1,
            r["writer"]["written"],
            r["writer"]["deleted"],
            r["writer"]["failed_ticks"],
            "yes" if not r["off_at_end"] else f"NO: {r['off_at_end']}",
            max((t for t in r["exact_after_s"].values() if t is not None), default=None),
        ]
        for i, r in enumerate(runs)
    ]
    text = table(
        ["run", "leases written", "removed", "ticks failed (etcd away)", "every node exact",
         "slowest node exact after churn (s)"],
        rows,
    )  # fmt: skip
    exact = sum(1 for r in runs if not r["off_at_end"])
    text += f"\n\nexact in {exact} of {len(runs)} runs ({args.seconds:.0f} s each)"
    write_results("churn", {"runs": runs, "seconds": args.seconds}, text)
    print(text)
    return 0 if exact == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
