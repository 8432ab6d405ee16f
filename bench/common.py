"""Shared helpers for the bench scripts: statistics, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def summary(samples: list[float]) -> dict:
    """Median, p99, max, min and count of a list of samples (NaN samples, "never", are left
    out of the figures and counted as ``failed``)."""
    s = sorted(x for x in samples if x == x)
    failed = len(samples) - len(s)
    if not s:
        return {"n": 0, "failed": failed, "median": float("nan"), "p99": float("nan")}
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    result = {"n": len(s), "median": statistics.median(s), "p99": p99, "max": s[-1], "min": s[0]}
    return {**result, "failed": failed} if failed else result


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check, limit: float) -> float:
    """Seconds until ``check()`` is true, polling every 0.1 s; NaN if not within ``limit``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > limit:
            return float("nan")
        time.sleep(0.1)
    return time.monotonic() - t0


def machine() -> dict:
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, data: dict, table: str) -> Path:
    """bench/results/<name>.json plus <name>.md holding the readable table."""
    RESULTS.mkdir(exist_ok=True)
    data = {"machine": machine(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot(
    path_name: str,
    title: str,
    series: dict[str, tuple[list, list]],
    xlabel: str,
    ylabel: str,
    kind: str = "line",
) -> Path:
    """A PNG next to the JSON: lines (x, y per series) or grouped bars (labels, values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if kind == "line":
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
    else:
        labels = next(iter(series.values()))[0]
        width = 0.8 / len(series)
        for n, (label, (_, values)) in enumerate(series.items()):
            ax.bar([i + n * width for i in range(len(labels))], values, width, label=label)
        ax.set_xticks(
            [i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels, rotation=15
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = RESULTS / f"{path_name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def compiled() -> None:
    """Byte-compile pyflannel first, as every installation has it (pip and the Debian
    package compile at install): a start-up measured on a tree without __pycache__ (this
    machine sets PYTHONDONTWRITEBYTECODE) would time the compiler."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "pyflannel"), quiet=1)


INSTALLED = Path("/var/tmp/pyflannel-bench/venv")


def installed_python() -> str:
    """The interpreter of pyflannel installed as an operator installs it: this tree's wheel
    in a virtual environment of its own (``pip install .``, not editable), with its
    dependencies. What its start-up costs is then pyflannel's: not the editable install's
    import finder (~18 ms of every start here) nor the .pth files this machine's sandbox puts
    in the system's site-packages (~10 ms more), neither of which an operator has. Rebuilt
    from the working tree each run (pip needs its package index for the dependencies the
    first time)."""
    python = INSTALLED / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(INSTALLED)], check=True)
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(root)],
        check=True,
    )
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(root)], check=True)
    return str(python)
