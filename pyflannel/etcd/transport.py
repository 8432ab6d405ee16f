"""The member a client talks to, as etcd's own clients do it: gRPC over one HTTP/2 connection
(etcd/channel.py) to the member in use, failover to the next endpoint when that member cannot
serve, authentication (a token per connection from user and password, or none: etcd then
takes the user from the client certificate's CN), and errors turned into ours.

What is sent again, unseen by the caller: only what the member certainly did not act on (a
call refused before it began: REFUSED_STREAM, a GOAWAY naming an earlier stream, a
connection found closed before the call was sent; a token the member no longer knows). A call
that may have been carried out (a transaction whose answer was lost) is never repeated here:
the caller reads again and decides, since repeating a conditional write would find its own
write and report a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from pyflannel.errors import StoreError, StoreUnavailable
from pyflannel.etcd.channel import CallFailed, Channel, ChannelClosed
from pyflannel.etcd.grpc_wire import Status, StatusCode
from pyflannel.etcd.proto import rpc_pb2
from pyflannel.etcd.tls import ContextCache, TLSConfigError, TLSFiles, explain
from pyflannel.subnet.stores import Endpoint, parse_endpoint

log = logging.getLogger(__name__)

# Codes that mean "this member cannot serve us now": try again, maybe elsewhere.
# OK belongs here for a stream the member ended without a word (a member shutting down).
_UNAVAILABLE = {
    StatusCode.OK,
    StatusCode.CANCELLED,
    StatusCode.UNKNOWN,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.ABORTED,
    StatusCode.INTERNAL,
    StatusCode.UNAVAILABLE,
}
_INVALID_TOKEN = "etcdserver: invalid auth token"
AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"

Reply = TypeVar("Reply", bound=Message)


class EtcdUnavailable(StoreUnavailable):
    """etcd could not be reached (or timed out); the caller retries with backoff."""


class EtcdError(StoreError):
    """etcd answered, but refused the request (permission, bad request, ...)."""


class Transport:
    def __init__(
        self,
        endpoints: list[str],
        *,
        username: str = "",
        password: str = "",
        tls: TLSFiles | None = None,
        timeout: float = 5.0,
    ):
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.username, self.password = username, password
        self.tls = tls or TLSFiles()
        self.timeout = timeout
        self._current = 0
        # Every failover starts a new generation: the channel of an older one is closed,
        # and a call that failed on an older one does not move the client again.
        self.generation = 0
        self._channel: Channel | None = None
        self._token: str | None = None  # the channel's, when we authenticate by password
        self._connecting = asyncio.Lock()
        self._contexts = ContextCache(self.tls)

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._current]

    # -- the channel -----------------------------------------------------------------------

    async def channel(self, ep: Endpoint, generation: int) -> Channel:
        """The connection to the member in use, authenticated; one for all calls. Dialling
        and authenticating happen under one lock, so concurrent first calls share both."""
        async with self._connecting:
            if generation != self.generation:
                # Another call moved the client meanwhile: going on would talk to a member
                # that call gave up on.
                raise ChannelClosed("the client moved to another member", unprocessed=True)
            channel = self._channel
            if channel is None or not channel.usable:
                if channel is not None:
                    channel.close()
                self._channel = self._token = None
                channel = await self._dial(ep)
                try:
                    self._token = await self._authenticate(channel) if self.username else None
                except BaseException:
                    channel.close()
                    raise
                self._channel = channel
            return channel

    async def _dial(self, ep: Endpoint) -> Channel:
        host, _, port = ep.target.rpartition(":")
        return await Channel.open(host, int(port), self._contexts.get() if ep.tls else None)

    async def _authenticate(self, channel: Channel) -> str:
        request = rpc_pb2.AuthenticateRequest(name=self.username, password=self.password)
        data = await channel.unary(AUTHENTICATE, request.SerializeToString())
        return rpc_pb2.AuthenticateResponse.FromString(data).token

    def metadata(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        token = (("token", self._token),) if self._token else ()
        return (*token, *extra)

    async def _renew_token(self, channel: Channel) -> None:
        async with self._connecting:
            if channel is self._channel:
                self._token = await self._authenticate(channel)

    async def failover(self, generation: int) -> None:
        """Leave the member that generation was talking to: the next call dials the next
        endpoint, a watch on it ends (and resumes there), calls under way finish where they
        are (its connection closes after them). Calls that broke because another call
        already failed over do not move again."""
        if generation != self.generation:
            return
        self.generation += 1
        channel, self._channel, self._token = self._channel, None, None
        if channel is not None:
            channel.leave("the client left this member (a call found it unable to serve)")
        if len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("etcd: switching to endpoint %s", self.endpoint.url)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    # -- calls -----------------------------------------------------------------------------

    async def unary(
        self,
        method: str,
        request: Message,
        reply_type: type[Reply],
        *,
        timeout: float | None = None,
    ) -> Reply:
        """One call to the member in use; sent again, once, where the member certainly did not
        act on it (see the module's docstring): to the member the client uses by then, if
        another call moved it meanwhile."""
        timeout = timeout or self.timeout
        deadline = asyncio.get_running_loop().time() + timeout
        body = request.SerializeToString()
        retried = False
        while True:
            ep, generation = self.endpoint, self.generation
            channel: Channel | None = None
            async with self.calling(generation, ep, timeout), asyncio.timeout_at(deadline):
                try:
                    channel = await self.channel(ep, generation)
                    data = await channel.unary(method, body, self.metadata(), timeout)
                    return reply_type.FromString(data)
                except (ChannelClosed, CallFailed) as e:
                    if retried or not await self._again(e, channel):
                        raise
            retried = True

    async def _again(self, error: ChannelClosed | CallFailed, channel: Channel | None) -> bool:
        if error.unprocessed:
            return True
        if (
            isinstance(error, CallFailed)
            and _token_expired(error.status)
            and self.username
            and channel is not None
        ):
            await self._renew_token(channel)
            return True
        return False

    @contextlib.asynccontextmanager
    async def calling(self, generation: int, ep: Endpoint, timeout: float) -> AsyncIterator[None]:
        """What every call does on failure: move to the next member when this one cannot
        serve, and turn errors into ours, said so that an operator can act."""
        try:
            yield
        except CallFailed as e:
            message = e.status.message.strip() or e.status.code.name
            if e.status.code in _UNAVAILABLE:
                await self.failover(generation)
                raise EtcdUnavailable(f"etcd at {ep.url}: {message}") from None
            if e.status.code == StatusCode.UNAUTHENTICATED:
                raise EtcdError(f"etcd at {ep.url} refused the credentials: {message}") from None
            raise EtcdError(f"etcd at {ep.url}: {message}") from None
        except DecodeError as e:
            await self.failover(generation)
            raise EtcdUnavailable(f"etcd at {ep.url}: not etcd's answer ({e})") from None
        except TimeoutError:
            await self.failover(generation)
            raise EtcdUnavailable(f"etcd at {ep.url}: no answer within {timeout:g} s") from None
        except (OSError, TLSConfigError) as e:  # ChannelClosed is a ConnectionError
            await self.failover(generation)
            raise EtcdUnavailable(f"etcd at {ep.url}: {self.describe(e, ep)}") from None

    def describe(self, e: BaseException, ep: Endpoint) -> str:
        """An error on the way to a member, in an operator's words (TLS named exactly)."""
        text = str(e) or type(e).__name__
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        cause = e.__cause__ if isinstance(e, ChannelClosed) and e.__cause__ else e
        host = ep.target.rpartition(":")[0].strip("[]")
        if ep.tls:
            tls = explain(cause, self.tls, host)
            if tls is not None:
                return tls
        elif "in HTTP/1" in text and "HTTPS" in text:
            return f"{text}: etcd serves TLS there: use https:// and --etcd-cafile"
        return text


def _token_expired(status: Status) -> bool:
    return status.code == StatusCode.UNAUTHENTICATED and _INVALID_TOKEN in status.message
