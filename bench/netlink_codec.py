"""The netlink codec's own cost, without the kernel: the messages that program K peers'
entries (neighbour, FDB entry, onlink route each: what ``backend.kernel.apply_all`` sends) and
the reading of a dump of them into the kernel state (``backend.kernel.read_state``, the
kernel's answers replaced by those same bytes). Per message, median of the repeats; with
``--before REV`` the same measurement runs on that commit's tree in the same run, each tree
in a process of its own, alternating.

    python3 bench/netlink_codec.py [--peers 5000] [--repeat 7] [--before a5e7761]

Writes bench/results/netlink_codec.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(peers: int) -> dict:
    """In this process, on whichever tree PYTHONPATH names: (encode, read) us per entry."""
    from ipaddress import IPv4Address, IPv4Network

    from pyflannel.backend import kernel
    from pyflannel.backend.kernel import Devices
    from pyflannel.backend.plan import KernelState, diff, overlay_entries

    desired = KernelState()
    for i in range(peers):
        subnet = IPv4Network((0x0A000000 + (i + 1) * 64, 26))
        mac = "02:00:" + ":".join(f"{b:02x}" for b in (i + 1).to_bytes(4, "big"))
        desired.add(overlay_entries(subnet, mac, IPv4Address(0xC6336400 + i)))
    devices = Devices(overlay=5, networks=(IPv4Network("10.0.0.0/12"),))
    ops = diff(desired, KernelState())
    t0 = time.perf_counter()
    wire = [kernel._encode(seq, devices, op) for seq, op in enumerate(ops, 1)]
    encode = time.perf_counter() - t0
    by_kind: dict[int, list] = {}
    for data in wire:
        kind = int.from_bytes(data[4:6], "little")
        by_kind.setdefault(kind, []).append((kind, 0x2, memoryview(data)[16:]))

    class Answers:  # the kernel's dump answers: the messages themselves
        def dump(self, build):
            request = build(1)
            family = request[16]
            kind = int.from_bytes(request[4:6], "little") - 2  # RTM_GET* -> RTM_NEW*
            return [a for a in by_kind.get(kind, []) if a[2][0] == family]

    kernel.route_socket = Answers  # type: ignore[assignment]
    t0 = time.perf_counter()
    state = kernel.read_state(None, devices)
    read = time.perf_counter() - t0
    assert state.size() == desired.size(), (state.size(), desired.size())
    return {
        "entries": len(ops),
        "encode_us": encode / len(ops) * 1e6,
        "read_us": read / len(ops) * 1e6,
    }


def tree_of(rev: str, into: Path) -> Path:
    """Commit ``rev``'s tree, unpacked."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_tree(tree: Path, peers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(peers)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before", help="a commit to measure beside this tree")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    from bench.common import table, write_results

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.before:
            trees[f"at {args.before}"] = tree_of(args.before, Path(tmp))
        samples: dict[str, list[dict]] = {name: [] for name in trees}
        for round_ in range(args.repeat):
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for name in order:
                samples[name].append(run_tree(trees[name], args.peers))
    results = {
        name: {
            "entries": runs[0]["entries"],
            "encode_us": statistics.median(r["encode_us"] for r in runs),
            "read_us": statistics.median(r["read_us"] for r in runs),
            "runs": runs,
        }
        for name, runs in samples.items()
    }
    rows = [[name, r["entries"], r["encode_us"], r["read_us"]] for name, r in results.items()]
    text = f"{args.peers} peers, medians of {args.repeat} runs (us per entry)\n\n" + table(
        ["tree", "entries", "encode us/entry", "read us/entry"], rows
    )
    write_results("netlink_codec", {"peers": args.peers, "results": results}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
