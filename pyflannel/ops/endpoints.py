"""What the health endpoint serves: /healthz, /readyz, /metrics and /status, each answered
from the daemon's liveness, readiness and published snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyflannel.ops.http_endpoint import Routes, as_json, text
from pyflannel.ops.liveness import Liveness

if TYPE_CHECKING:  # the snapshot and status modules load when first asked (not at start-up)
    from pyflannel.ops.snapshot import DaemonSnapshot, StatusIO


def routes(
    liveness: Liveness,
    ready: asyncio.Event,
    snapshot: Callable[[], DaemonSnapshot],
    datapath_stats: Callable[[], Awaitable[dict | None]],
    answers: StatusIO,
) -> Routes:
    async def healthz() -> tuple[int, str, bytes]:
        problem = await liveness.problem()
        if problem:
            return text(500, f"flanneld is not healthy: {problem}\n")
        return text(200, "flanneld is running")

    async def readyz() -> tuple[int, str, bytes]:
        if ready.is_set():
            return text(200, "flanneld is ready")
        return text(503, "flanneld is not ready yet")

    async def metrics() -> tuple[int, str, bytes]:
        from pyflannel.ops.metrics import metrics_text  # prometheus_client: only when scraped
        from pyflannel.ops.status.document import DatapathStats

        body = metrics_text(snapshot(), DatapathStats.parse(await datapath_stats()))
        return 200, "text/plain; version=0.0.4; charset=utf-8", body

    async def status() -> tuple[int, str, bytes]:
        from pyflannel.ops.status.live import daemon_status

        return as_json(200, (await daemon_status(snapshot(), answers)).to_json())

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics, "/status": status}
