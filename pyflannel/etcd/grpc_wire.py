"""gRPC over HTTP/2, the parts that are plain data (pure): the request's headers, the
length-prefixed messages of a call's body, and the status a call ends with
(https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md). The bytes are carried by
etcd/channel.py."""

from __future__ import annotations

import enum
import math
import urllib.parse
from dataclasses import dataclass

MAX_MESSAGE = 64 << 20  # bytes: a listing of many leases fits many times over


class StatusCode(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class Status:
    """How a call ended: its gRPC code and the server's message."""

    code: StatusCode
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == StatusCode.OK


class WireError(Exception):
    """The peer's bytes are not gRPC (a message too big, compressed without being asked)."""


def request_headers(
    authority: str,
    path: str,
    *,
    tls: bool,
    timeout: float | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "https" if tls else "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "pyflannel grpc-h2"),
    ]
    if timeout is not None:
        headers.append(("grpc-timeout", timeout_value(timeout)))
    return headers + [(k.lower(), v) for k, v in metadata]


def timeout_value(seconds: float) -> str:
    """``grpc-timeout``: at most eight digits and a unit; milliseconds, rounded up."""
    millis = max(1, math.ceil(seconds * 1000))
    return f"{millis}m" if millis < 10**8 else f"{min(math.ceil(millis / 1000), 10**8 - 1)}S"


def frame(message: bytes) -> bytes:
    """One message of a call's body: uncompressed flag, big-endian length, the message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


class MessageReader:
    """Cuts a call's body, as its DATA frames arrive, into whole messages."""

    def __init__(self, limit: int = MAX_MESSAGE):
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 5:
            compressed, length = self._buffer[0], int.from_bytes(self._buffer[1:5], "big")
            if compressed:
                raise WireError("a compressed message (none was asked for)")
            if length > self._limit:
                raise WireError(f"a message of {length} bytes (at most {self._limit})")
            if len(self._buffer) < 5 + length:
                break
            messages.append(bytes(self._buffer[5 : 5 + length]))
            del self._buffer[: 5 + length]
        return messages

    @property
    def partial(self) -> bool:
        """A message begun and not finished (the body ended in its middle)."""
        return bool(self._buffer)


def status_of(headers: list[tuple[str, str]]) -> Status | None:
    """The status in a call's trailers (or in its only headers), if they carry one."""
    fields = dict(headers)
    code = fields.get("grpc-status")
    if code is None:
        return None
    try:
        status = StatusCode(int(code))
    except ValueError:
        status = StatusCode.UNKNOWN
    return Status(status, urllib.parse.unquote(fields.get("grpc-message", "")))


def response_problem(headers: list[tuple[str, str]]) -> Status | None:
    """What is wrong with a call's response headers: not HTTP 200, or not gRPC (a proxy's
    page, a web server on etcd's port). None when they open a gRPC answer."""
    fields = dict(headers)
    status = fields.get(":status", "")
    if status != "200":
        return Status(_HTTP_STATUS.get(status, StatusCode.UNKNOWN), f"HTTP {status} (not gRPC)")
    content_type = fields.get("content-type", "")
    if not content_type.startswith("application/grpc"):
        return Status(StatusCode.UNKNOWN, f"an answer of type {content_type!r}, not gRPC")
    return None


# gRPC's mapping of HTTP statuses that carry no grpc-status (a proxy in between).
_HTTP_STATUS = {
    "400": StatusCode.INTERNAL,
    "401": StatusCode.UNAUTHENTICATED,
    "403": StatusCode.PERMISSION_DENIED,
    "404": StatusCode.UNIMPLEMENTED,
    "429": StatusCode.UNAVAILABLE,
    "502": StatusCode.UNAVAILABLE,
    "503": StatusCode.UNAVAILABLE,
    "504": StatusCode.UNAVAILABLE,
}
