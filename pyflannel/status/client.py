"""Fetching the running daemon's status document from its health endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from pyflannel.options import Options


def daemon_document(o: Options, timeout: float = 5.0) -> tuple[dict | None, str]:
    """(document, "") from the daemon, or (None, why it could not be had)."""
    if not o.healthz_port:
        return None, "its health endpoint is off (--healthz-port=0)"
    host = "127.0.0.1" if o.healthz_ip in ("", "0.0.0.0") else o.healthz_ip
    url = f"http://{host}:{o.healthz_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read()), ""
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return None, f"no answer on {url}: {reason}"
