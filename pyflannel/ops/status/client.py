"""Fetching the running daemon's status document from its health endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from pyflannel.ops.instance import running_instance
from pyflannel.ops.status.document import SchemaError, StatusDoc


@dataclass(frozen=True)
class StatusEndpoint:
    """Where to ask a network's daemon: its subnet file (the instance record lies beside it)
    and the --healthz-ip/--healthz-port given (``pinned``: given, so they win)."""

    subnet_file: str = "/run/flannel/subnet.env"
    healthz_ip: str = "127.0.0.1"
    healthz_port: int = 8471
    pinned: bool = False


def endpoint_address(o: StatusEndpoint) -> tuple[str, int] | None:
    """Where this network's daemon serves /status: the address its instance record (beside
    the subnet file) gives, unless --healthz-ip/--healthz-port say otherwise."""
    host, port = o.healthz_ip, o.healthz_port
    record = running_instance(o.subnet_file)
    if record is not None and not o.pinned:
        if not record.healthz:
            return None  # that daemon serves no endpoint (turned off, or its port was taken)
        host, _, text = record.healthz.rpartition(":")
        port = int(text)
    if not port:
        return None
    return ("127.0.0.1" if host in ("", "0.0.0.0") else host), port


def daemon_document(o: StatusEndpoint, timeout: float = 5.0) -> tuple[StatusDoc | None, str]:
    """(document, "") from the daemon, or (None, why it could not be had: no answer, or an
    answer that is not a status document)."""
    address = endpoint_address(o)
    if address is None:
        return None, "it serves no health endpoint (--healthz-port=0, or its port was taken)"
    host, port = address
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return None, f"no answer on {url}: {reason}"
    try:
        return StatusDoc.parse(json.loads(body)), ""
    except ValueError as e:  # SchemaError, or not JSON at all
        kind = "a status document" if isinstance(e, SchemaError) else "JSON"
        return None, f"the answer on {url} is not {kind}: {e}"
