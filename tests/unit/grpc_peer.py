"""A gRPC server over HTTP/2 (h2, server side) in the test's own event loop, on loopback: it
answers etcd's methods with what each test's handler says, and can misbehave on purpose
(refuse a call, send GOAWAY, close mid-call, answer in HTTP/1, never speak). The client and
this server run in one process, so failover, reconnects and auth races are tested without
etcd; the real-etcd tests are tests/integration/test_etcd_*.py."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from pyflannel.etcd.grpc_wire import MessageReader, frame


@dataclass
class Answer:
    """A message (or none) and the status that ends the call."""

    message: bytes | None = None
    code: int = 0
    text: str = ""


@dataclass
class Refuse:
    """RST_STREAM REFUSED_STREAM: the call was not begun."""


@dataclass
class GoAway:
    """GOAWAY naming the stream before this one: this call was not begun; the connection
    closes once earlier calls are done."""


@dataclass
class Drop:
    """Close the connection without answering (after the request was read)."""


Handler = Callable[[bytes, dict[str, str]], Awaitable[Answer | Refuse | GoAway | Drop]]


@dataclass
class Seen:
    path: str
    request: bytes
    headers: dict[str, str]
    connection: int


@dataclass
class GrpcPeer:
    handlers: dict[str, Handler]
    http1: bool = False  # answer like an HTTP/1.1 server
    silent: bool = False  # accept connections, never speak
    window: int = 65535  # the server's initial stream window (flow control toward it)
    calls: list[Seen] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> GrpcPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # each connection's reader then ends
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        number = self.connections
        try:
            if self.silent:
                await reader.read()
                return
            if self.http1:
                await reader.read(100)
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nBad Request")
                await writer.drain()
                return
            await _Connection(self, reader, writer, number).run()
        except (ConnectionError, asyncio.IncompleteReadError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


class _Connection:
    def __init__(self, peer: GrpcPeer, reader, writer, number: int):
        self.peer, self.reader, self.writer, self.number = peer, reader, writer, number
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.requests: dict[int, tuple[dict[str, str], MessageReader, list[bytes]]] = {}
        self.closed = asyncio.Event()

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.peer.window})
        self.flush()
        while not self.closed.is_set():
            data = await self.reader.read(65536)
            if not data:
                return
            for event in self.h2.receive_data(data):
                self.on(event)
            self.flush()

    def on(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = (dict(event.headers), MessageReader(), [])
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            headers, reader, messages = self.requests[event.stream_id]
            messages += reader.feed(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            headers, _, messages = self.requests.pop(event.stream_id)
            task = asyncio.get_running_loop().create_task(
                self.answer(event.stream_id, headers, b"".join(messages))
            )
            self.peer._tasks.add(task)
            task.add_done_callback(self.peer._tasks.discard)

    async def answer(self, stream_id: int, headers: dict[str, str], request: bytes) -> None:
        path = headers[":path"]
        self.peer.calls.append(Seen(path, request, headers, self.number))
        outcome = await self.peer.handlers[path](request, headers)
        if isinstance(outcome, Refuse):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(outcome, GoAway):
            self.h2.close_connection(last_stream_id=max(0, stream_id - 2))
        elif isinstance(outcome, Drop):
            self.closed.set()
            self.writer.close()
            return
        else:
            self.h2.send_headers(
                stream_id, [(":status", "200"), ("content-type", "application/grpc")]
            )
            if outcome.message is not None:
                await self.send(stream_id, frame(outcome.message))
            self.h2.send_headers(
                stream_id,
                [
                    ("grpc-status", str(outcome.code)),
                    ("grpc-message", urllib.parse.quote(outcome.text)),
                ],
                end_stream=True,
            )
        self.flush()

    async def send(self, stream_id: int, data: bytes) -> None:
        """Within the client's flow-control window, waiting for it to open."""
        while data:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                await asyncio.sleep(0.001)
                continue
            self.h2.send_data(stream_id, data[:window])
            data = data[window:]
            self.flush()
            await self.writer.drain()
