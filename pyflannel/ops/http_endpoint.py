"""The health/metrics endpoint (upstream's --healthz-ip/--healthz-port): /healthz, /readyz,
/metrics (Prometheus text format) and /status (JSON). A minimal HTTP/1.1 server on asyncio:
GET only, one request per connection, no framework."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
Routes = dict[str, Handler]
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()


def as_json(status: int, doc) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc, indent=1, default=str).encode()


class HttpEndpoint:
    def __init__(self, routes: Routes):
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)
        log.info("health endpoint on http://%s:%d (%s)", host, port, ", ".join(self.routes))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = text(405, "GET only\n")
            elif path in self.routes:
                try:
                    status, ctype, body = await self.routes[path]()
                except Exception as e:  # a broken handler must not take the endpoint down
                    log.exception("health endpoint %s: %s", path, e)
                    status, ctype, body = text(500, f"{e}\n")
            else:
                status, ctype, body = text(404, f"no {path}; try {', '.join(self.routes)}\n")
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
