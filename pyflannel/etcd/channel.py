"""One HTTP/2 connection to one etcd member, carrying gRPC calls: unary calls and streams,
many at once. h2 (python-hyper's sans-IO HTTP/2) does the framing, flow control and stream
states; this module moves its bytes over an asyncio connection (TCP, or TLS with ALPN "h2";
plaintext is HTTP/2 with prior knowledge, as every gRPC client speaks to etcd) and turns its
events into calls (etcd/grpc_wire.py has the gRPC parts)."""

from __future__ import annotations

import asyncio
import collections
import ssl

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from pyflannel.etcd.grpc_wire import (
    MessageReader,
    Status,
    StatusCode,
    WireError,
    frame,
    request_headers,
    response_problem,
    status_of,
)

READ_SIZE = 65536
WINDOW = 4 << 20  # bytes the member may send before we acknowledge (per call and in all)


class ChannelClosed(ConnectionError):
    """The connection is gone (or going): the call's outcome is unknown, unless
    ``unprocessed`` says the member certainly did not act on it (refused before it began,
    or never sent), so that it is safe to send again."""

    def __init__(self, message: str, *, unprocessed: bool = False):
        super().__init__(message)
        self.unprocessed = unprocessed


class CallFailed(Exception):
    """The member ended a call with a status other than OK (or with OK and no answer)."""

    def __init__(self, status: Status, *, unprocessed: bool = False):
        super().__init__(status.message or status.code.name)
        self.status = status
        self.unprocessed = unprocessed


class Call:
    """One gRPC call (an HTTP/2 stream): messages out, messages in, a status at the end."""

    def __init__(self, channel: Channel, stream_id: int, stream: bool):
        self.channel = channel
        self.stream_id = stream_id
        self.stream = stream  # a stream (a watch) rather than one request and its answer
        self._reader = MessageReader()
        self._messages: collections.deque[bytes] = collections.deque()
        self._end: CallFailed | ChannelClosed | None = None  # how it ended, once it has
        self._changed = asyncio.Event()

    async def send(self, message: bytes, *, last: bool = False) -> None:
        await self.channel._send(self, frame(message), last)

    async def receive(self) -> bytes:
        """The next message; CallFailed or ChannelClosed once the call has ended."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._end is not None:
                raise self._end
            self._changed.clear()
            await self._changed.wait()

    def cancel(self) -> None:
        """Done with the call: tell the member (RST_STREAM) unless it has ended."""
        self.channel._cancel(self)

    # -- what the channel reports ------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self._messages.extend(self._reader.feed(data))
        self._changed.set()

    def _finish(self, end: CallFailed | ChannelClosed) -> None:
        if self._end is None:
            self._end = end
        self._changed.set()

    @property
    def ended(self) -> bool:
        return self._end is not None


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, tls: bool
    ):
        self._reader, self._writer = reader, writer
        self.authority, self.tls = authority, tls
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            },
        )
        self._calls: dict[int, Call] = {}
        self._window_opened = asyncio.Event()
        self._ready = asyncio.Event()  # the member's SETTINGS arrived (or the connection failed)
        self.failure: ChannelClosed | None = None  # why the connection ended
        self._going_away = False  # GOAWAY received: no new calls
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None) -> Channel:
        name = host.strip("[]")
        try:
            reader, writer = await asyncio.open_connection(
                name, port, ssl=tls, server_hostname=name if tls else None, limit=READ_SIZE
            )
        except (ConnectionResetError, ssl.SSLEOFError, asyncio.IncompleteReadError) as e:
            if tls is None:
                raise
            failure = ChannelClosed(
                "the server closed the connection in the TLS handshake: does it speak TLS? "
                "(if etcd serves plaintext there, use http://)"
            )
            raise failure from e
        channel = cls(reader, writer, f"{host}:{port}", tls is not None)
        if tls is not None:
            protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if protocol not in (None, "h2"):  # None: the server knows no ALPN; try HTTP/2
                writer.close()
                raise ChannelClosed(f"the server chose {protocol!r} over TLS, not HTTP/2 (h2)")
        channel._h2.initiate_connection()
        channel._h2.increment_flow_control_window(WINDOW - 65535)
        channel._flush()
        channel._task = asyncio.get_running_loop().create_task(channel._read_loop())
        # The member's SETTINGS, its first word in HTTP/2, or why not: a TLS alert refusing
        # our client certificate (TLS 1.3 sends it after the handshake), an HTTP/1 answer.
        try:
            await channel._ready.wait()
        except BaseException:  # the caller's deadline: nothing of this connection stays
            channel.close()
            raise
        if channel.failure is not None:
            raise channel.failure
        return channel

    @property
    def usable(self) -> bool:
        """New calls may start on it."""
        return self.failure is None and not self._going_away

    # -- calls -----------------------------------------------------------------------------

    async def unary(
        self,
        path: str,
        request: bytes,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,
    ) -> bytes:
        """One request, one answer (also for a streaming method used once)."""
        call = self.start(path, metadata, timeout, stream=False)
        try:
            await call.send(request, last=True)
            answer = await call.receive()
            try:
                await call.receive()  # the status after the answer
            except CallFailed as e:
                if not e.status.ok:
                    raise
            return answer
        finally:
            call.cancel()

    def start(
        self,
        path: str,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,
        *,
        stream: bool = True,
    ) -> Call:
        """A new call: its headers are sent; its messages are the caller's to send."""
        if not self.usable:
            raise ChannelClosed(
                str(self.failure or "the member is closing the connection"), unprocessed=True
            )
        stream_id = self._h2.get_next_available_stream_id()
        headers = request_headers(
            self.authority, path, tls=self.tls, timeout=timeout, metadata=metadata
        )
        self._h2.send_headers(stream_id, headers)
        call = self._calls[stream_id] = Call(self, stream_id, stream)
        self._flush()
        return call

    async def _send(self, call: Call, data: bytes, last: bool) -> None:
        while True:
            if call._end is not None:
                raise call._end
            try:
                window = min(
                    self._h2.local_flow_control_window(call.stream_id),
                    self._h2.max_outbound_frame_size,
                )
                if len(data) <= window:
                    self._h2.send_data(call.stream_id, data, end_stream=last)
                    self._flush()
                    break
                if window > 0:
                    self._h2.send_data(call.stream_id, data[:window])
                    data = data[window:]
                    self._flush()
                    continue
            except h2.exceptions.ProtocolError:  # the call, or the connection, has closed
                raise (
                    call._end or self.failure or ChannelClosed("the member closed the call")
                ) from None
            self._window_opened.clear()
            await self._window_opened.wait()
        await self._writer.drain()

    def _cancel(self, call: Call) -> None:
        if self._calls.pop(call.stream_id, None) is None:
            return
        if not call.ended and self.failure is None:
            self._reset(call.stream_id, h2.errors.ErrorCodes.CANCEL)
            self._flush()
        call._finish(ChannelClosed("the call was cancelled"))
        self._close_if_drained()

    # -- the connection --------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read_loop(self) -> None:
        first = True
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    if self._ready.is_set() or self.tls:
                        raise ChannelClosed("the member closed the connection")
                    raise ChannelClosed(
                        "the server closed the connection before its first HTTP/2 frame: "
                        "does it serve TLS there? (then use https://)"
                    )
                if first and data.startswith(b"HTTP/1."):  # h2 would wait for a whole "frame"
                    raise ChannelClosed(_not_http2(data, None))
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    raise ChannelClosed(_not_http2(data if first else b"", e)) from None
                first = False
                for event in events:
                    self._handle(event)
                self._flush()
        except ChannelClosed as e:
            self._fail(e)
        except OSError as e:  # the socket, or TLS (an alert from the member)
            failure = ChannelClosed(_describe_os_error(e))
            failure.__cause__ = e  # for etcd/tls.py to explain
            self._fail(failure)
        except asyncio.CancelledError:
            self._fail(ChannelClosed("the client closed the connection"))
            raise

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_opened.set()
            self._ready.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self._going_away_after(event)
            return
        call = self._calls.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if call is not None and not call.ended:
                try:
                    call._deliver(event.data)
                except WireError as e:
                    self._end_call(call, CallFailed(Status(StatusCode.INTERNAL, str(e))))
                    self._reset(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if call is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            headers = _text(event.headers)
            status = status_of(headers)  # a call that ends at once: its only headers
            problem = response_problem(headers)
            if status is None and problem is not None:
                self._end_call(call, CallFailed(problem))
                self._reset(event.stream_id, h2.errors.ErrorCodes.CANCEL)
            elif status is not None:
                self._end_call(call, CallFailed(status))
        elif isinstance(event, h2.events.TrailersReceived):
            status = status_of(_text(event.headers)) or Status(
                StatusCode.INTERNAL, "the call ended without a gRPC status"
            )
            self._end_call(call, CallFailed(status))
        elif isinstance(event, h2.events.StreamEnded):
            self._end_call(
                call, CallFailed(Status(StatusCode.INTERNAL, "the call ended without a status"))
            )
        elif isinstance(event, h2.events.StreamReset):
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            why = _error_name(event.error_code)
            status = Status(StatusCode.UNAVAILABLE, f"the member reset the call ({why})")
            self._end_call(call, CallFailed(status, unprocessed=refused))

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        """RST_STREAM, unless the stream or the connection is already closed."""
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass

    def _end_call(self, call: Call, end: CallFailed | ChannelClosed) -> None:
        self._calls.pop(call.stream_id, None)
        if isinstance(end, CallFailed) and end.status.ok and call._reader.partial:
            end = CallFailed(Status(StatusCode.INTERNAL, "the answer was cut off"))
        call._finish(end)
        self._close_if_drained()

    def _going_away_after(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY: calls after its last stream ID were never begun; the others may finish."""
        self._going_away = True
        why = _error_name(event.error_code)
        detail = (event.additional_data or b"").decode(errors="replace")
        reason = f"the member is closing the connection ({why}{': ' + detail if detail else ''})"
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id, call in list(self._calls.items()):
            if stream_id > last:
                self._end_call(call, ChannelClosed(reason, unprocessed=True))
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
            self.failure = ChannelClosed(reason)
        self._close_if_drained()

    def leave(self, reason: str) -> None:
        """No new calls; the streams (watches) end now with ``reason``, so that they move
        with the client; calls under way finish (one failed call does not fail the others,
        which may well be answered), then the connection closes."""
        self._going_away = True
        for call in list(self._calls.values()):
            if call.stream:
                self._end_call(call, ChannelClosed(reason))
                self._reset(call.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._going_away and not self._calls:
            self.close()

    def _fail(self, failure: ChannelClosed) -> None:
        if self.failure is None:
            self.failure = failure
        for call in list(self._calls.values()):
            call._finish(self.failure)
        self._calls.clear()
        self._window_opened.set()
        self._ready.set()
        self._writer.close()

    def close(self, reason: str = "the client closed the connection") -> None:
        """Close the connection; calls still on it end with ChannelClosed(reason)."""
        if self.failure is None:
            self.failure = ChannelClosed(reason)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._fail(self.failure)


def _error_name(code: int | None) -> str:
    try:
        return h2.errors.ErrorCodes(code or 0).name
    except ValueError:
        return f"error {code}"


def _text(headers) -> list[tuple[str, str]]:
    """Headers as text (h2 decodes them, as configured; its types allow bytes)."""
    return [
        (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
        for k, v in headers or ()
    ]


def _not_http2(first: bytes, error: Exception | None) -> str:
    """What a member that does not speak HTTP/2 answered instead."""
    if first.startswith(b"HTTP/1."):
        head = first.split(b"\r\n\r\n", 1)
        body = head[1].strip()[:120].decode(errors="replace") if len(head) > 1 else ""
        status = head[0].split(b"\r\n", 1)[0].decode(errors="replace")
        return f"the server answered in HTTP/1 ({status}{': ' + body if body else ''})"
    if first[:1] == b"\x15":
        return "the server answered with a TLS alert: it speaks TLS"
    return f"not HTTP/2: {error}"


def _describe_os_error(e: OSError) -> str:
    if isinstance(e, ConnectionResetError):
        return "the member reset the connection"
    return str(e) or type(e).__name__
