"""Shared helpers for the bench scripts: statistics, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def summary(samples: list[float]) -> dict:
    """Median, p99, max, min and count of a list of samples."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {"n": len(s), "median": statistics.median(s), "p99": p99, "max": s[-1], "min": s[0]}


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
