"""Starting the health endpoint of one network's daemon, and saying where it is.

With the default port taken (by the daemon of another network on this host, usually) the next
free port is used and said; a port given with --healthz-port is used or not at all. Either way
the instance record says where it is, so ``pyflannel status`` for this network finds it.
"""

from __future__ import annotations

import logging
import os

from pyflannel.ops.http_endpoint import HttpEndpoint, Routes
from pyflannel.ops.instance import Instance, instances_beside

log = logging.getLogger(__name__)

PORT_TRIES = 10  # the default port and the next nine, one per network on a host


async def start_health_endpoint(
    routes: Routes, ip: str, port: int, pinned: bool, instance: Instance
) -> HttpEndpoint | None:
    """The endpoint serving ``routes``, or None (port 0, or no port free)."""
    if not port:
        return None
    subnet_file = instance.record.subnet_file
    endpoint = HttpEndpoint(routes)
    why = ""
    for candidate in range(port, min(port + (1 if pinned else PORT_TRIES), 65536)):
        try:
            await endpoint.start(ip, candidate)
            break
        except OSError as e:
            why = e.strerror or str(e)
    else:
        log.error(
            "health endpoint on %s:%d unavailable: %s (%s); continuing without it",
            ip,
            port,
            why,
            holder_of(port, subnet_file),
        )
        return None
    if candidate != port:
        log.warning(
            "health endpoint on %s:%d instead of %d, which is in use (%s); "
            "`pyflannel status --subnet-file=%s` finds it, --healthz-port fixes it",
            ip,
            candidate,
            port,
            holder_of(port, subnet_file),
            subnet_file,
        )
    instance.publish(healthz=f"{ip}:{candidate}")
    return endpoint


def holder_of(port: int, subnet_file: str) -> str:
    """Who has ``port``, as far as the instance records beside our subnet file know."""
    for other in instances_beside(subnet_file):
        if other.pid != os.getpid() and other.healthz.endswith(f":{port}"):
            return f"by pyflannel {other.describe()}"
    return "by another process"
