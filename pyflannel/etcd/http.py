"""HTTP/1.1 for etcd's JSON gateway (its v3 API as JSON over HTTP, ``/v3/...``, served on the
client port by every etcd since 3.4): unary requests over kept-alive connections, and
streaming answers (the watch) that arrive as newline-delimited JSON. asyncio streams carry
the bytes; h11 (sans-IO) does the HTTP framing."""

from __future__ import annotations

import asyncio
import json
import ssl

import h11

READ_SIZE = 65536


class HttpClosed(ConnectionError):
    """The peer closed the connection (or sent something that is not HTTP)."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host
        self.http = h11.Connection(h11.CLIENT)
        self.closed = False
        self.exchanges = 0  # requests sent on this connection

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None) -> Connection:
        reader, writer = await asyncio.open_connection(
            host.strip("[]"), port, ssl=tls, server_hostname=host.strip("[]") if tls else None
        )
        return cls(reader, writer, f"{host}:{port}")

    def _headers(self, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [("Host", self.host), ("Content-Type", "application/json"), *extra]

    async def _send(self, *events) -> None:
        for event in events:
            data = self.http.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def _event(self):
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as e:
                raise HttpClosed(f"not HTTP: {e}") from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise HttpClosed("connection closed")
            self.http.receive_data(data)

    async def _response(self) -> int:
        while True:
            event = await self._event()
            if isinstance(event, h11.Response):
                return event.status_code
            if isinstance(event, h11.ConnectionClosed):
                raise HttpClosed("connection closed")

    async def post(self, path: str, body: bytes, headers: list[tuple[str, str]]) -> None:
        """Send a whole POST request; the answer is read by the caller."""
        self.exchanges += 1
        await self._send(
            h11.Request(
                method="POST",
                target=path,
                headers=self._headers([*headers, ("Content-Length", str(len(body)))]),
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    async def request(
        self, path: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; (status, response body)."""
        await self.post(path, body, headers)
        return await self._answer()

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``; (status, response body)."""
        self.exchanges += 1
        await self._send(
            h11.Request(method="GET", target=path, headers=[("Host", self.host)]),
            h11.EndOfMessage(),
        )
        return await self._answer()

    async def _answer(self) -> tuple[int, bytes]:
        status = await self._response()
        chunks = []
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpClosed("connection closed")
        return status, b"".join(chunks)

    @property
    def reusable(self) -> bool:
        """Both sides done with the last exchange, and keep-alive: ready for the next."""
        if self.closed or self.http.our_state is not h11.DONE:
            return False
        if self.http.their_state is not h11.DONE:
            return False
        self.http.start_next_cycle()
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class Stream:
    """A streaming answer: newline-delimited JSON messages for as long as the server sends
    them. The request is whole (Go's HTTP/1.1 server reads a request body to its end before
    it answers, so a request cannot go on streaming alongside)."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.status = 0
        self._buffer = b""
        self._ended = False

    @classmethod
    async def open(
        cls, connection: Connection, path: str, headers: list[tuple[str, str]], request: dict
    ) -> Stream:
        await connection.post(path, _line(request), headers)
        return cls(connection)

    async def receive(self) -> dict:
        """The next message (a JSON object); HttpClosed when the stream has ended."""
        if not self.status:
            self.status = await self.connection._response()
        while b"\n" not in self._buffer:
            if self._ended:
                raise HttpClosed("stream ended")
            event = await self.connection._event()
            if isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._ended = True
                if self._buffer.strip():
                    self._buffer += b"\n"
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError as e:
            raise HttpClosed(f"not JSON in the stream: {e}") from None

    def close(self) -> None:
        self.connection.close()


def _line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
