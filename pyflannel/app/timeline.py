"""The daemon's start-up, step by step, on the wall clock: logged once at debug level when the
daemon is ready, so that ``bench/startup.py --profile`` can tell where every 10 ms of a start
goes (it knows when it exec'ed the daemon). Imports nothing but ``time``: the first step is
taken before anything else is imported."""

from __future__ import annotations

import time

STEPS: list[tuple[str, float]] = []


def step(name: str) -> None:
    STEPS.append((name, time.time()))


def render() -> str:
    """``name=epoch_seconds`` per step, in order (what the bench parses)."""
    return " ".join(f"{name}={at:.6f}" for name, at in STEPS)
