"""The etcd client's transport against a gRPC peer in the same process (tests/unit/grpc_peer.py):
what is sent again and what never is, failover, re-authentication, flow control both ways,
and what a peer that is not etcd's gRPC looks like. The real-etcd tests are
tests/integration/test_etcd_*.py."""

import asyncio

import pytest

from pyflannel.etcd.client import EtcdClient, EtcdError, EtcdUnavailable
from pyflannel.etcd.proto import kv_pb2, rpc_pb2

from .grpc_peer import Answer, Drop, GoAway, GrpcPeer, Refuse

RANGE, TXN, AUTH = (
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.Auth/Authenticate",
)


def range_answer(value: bytes = b"v", revision: int = 42) -> Answer:
    reply = rpc_pb2.RangeResponse(
        header=rpc_pb2.ResponseHeader(revision=revision),
        kvs=[kv_pb2.KeyValue(key=b"/k", value=value, mod_revision=revision)],
    )
    return Answer(reply.SerializeToString())


async def answer_range(request: bytes, headers: dict) -> Answer:
    return range_answer(rpc_pb2.RangeRequest.FromString(request).key * 2)


async def test_a_unary_call_and_its_answer():
    async with GrpcPeer({RANGE: answer_range}) as peer:
        client = EtcdClient([peer.url])
        kv, revision = await client.get(b"/k")
        await client.close()
    assert (kv.value, revision) == (b"/k/k", 42)
    seen = peer.calls[0]
    assert seen.headers["content-type"] == "application/grpc" and seen.headers["te"] == "trailers"
    assert seen.headers["grpc-timeout"] == "5000m"


async def test_many_calls_share_one_connection():
    async with GrpcPeer({RANGE: answer_range}) as peer:
        client = EtcdClient([peer.url])
        keys = [f"/k{i}".encode() for i in range(50)]
        answers = await asyncio.gather(*(client.get(k) for k in keys))
        await client.close()
    assert [kv.value for kv, _ in answers] == [k * 2 for k in keys]
    assert peer.connections == 1


async def test_messages_larger_than_every_window_both_ways():
    big = bytes(range(256)) * 4096  # 1 MiB: beyond HTTP/2's default 64 KiB window

    async def echo(request: bytes, headers: dict) -> Answer:
        return range_answer(rpc_pb2.RangeRequest.FromString(request).key)

    async with GrpcPeer({RANGE: echo}, window=16384) as peer:
        client = EtcdClient([peer.url])
        kv, _ = await client.get(big)
        await client.close()
    assert kv.value == big


async def test_an_error_status_is_etcds_words():
    async def refuse(request, headers):
        return Answer(code=7, text="etcdserver: permission denied")

    async with GrpcPeer({RANGE: refuse}) as peer:
        client = EtcdClient([peer.url])
        with pytest.raises(EtcdError, match=f"etcd at {peer.url}: etcdserver: permission denied"):
            await client.get(b"/k")
        await client.close()


@pytest.mark.parametrize("refusal", [Refuse(), GoAway()], ids=["REFUSED_STREAM", "GOAWAY"])
async def test_a_call_the_member_never_began_is_sent_again(refusal):
    """Refused before it began (RST_STREAM REFUSED_STREAM, or GOAWAY naming an earlier
    stream): safe to send again, even a transaction."""
    outcomes = [refusal]

    async def txn(request, headers):
        if outcomes:
            return outcomes.pop()
        reply = rpc_pb2.TxnResponse(header=rpc_pb2.ResponseHeader(revision=7), succeeded=True)
        return Answer(reply.SerializeToString())

    async with GrpcPeer({TXN: txn}) as peer:
        client = EtcdClient([peer.url])
        assert await client.put_if(b"/k", b"v", lease=0, mod_revision=0) == 7
        await client.close()
    assert len(peer.calls) == 2


async def test_a_transaction_whose_answer_was_lost_is_never_sent_again():
    """The member read it and the connection broke: it may have been carried out. Sending it
    again would find its own write and report a conflict; the caller reads and decides."""

    async def lost(request, headers):
        return Drop()

    async with GrpcPeer({TXN: lost}) as peer:
        client = EtcdClient([peer.url], timeout=2)
        with pytest.raises(EtcdUnavailable, match="closed the connection"):
            await client.put_if(b"/k", b"v", lease=0, mod_revision=0)
        await client.close()
    assert len(peer.calls) == 1


async def test_a_member_that_cannot_serve_is_left_for_the_next():
    async def unavailable(request, headers):
        return Answer(code=14, text="etcdserver: request timed out")

    async with GrpcPeer({RANGE: unavailable}) as bad, GrpcPeer({RANGE: answer_range}) as good:
        client = EtcdClient([bad.url, good.url])
        with pytest.raises(EtcdUnavailable, match="request timed out"):
            await client.get(b"/k")
        assert client.endpoint.url == good.url
        kv, _ = await client.get(b"/k")
        await client.close()
    assert kv.value == b"/k/k"


async def test_a_token_the_member_no_longer_knows_is_renewed_and_the_call_sent_again():
    tokens = iter(["t1", "t2"])

    async def authenticate(request, headers):
        assert rpc_pb2.AuthenticateRequest.FromString(request).password == "pw"
        return Answer(rpc_pb2.AuthenticateResponse(token=next(tokens)).SerializeToString())

    async def needs_t2(request, headers):
        if headers.get("token") != "t2":
            return Answer(code=16, text="etcdserver: invalid auth token")
        return range_answer()

    async with GrpcPeer({AUTH: authenticate, RANGE: needs_t2}) as peer:
        client = EtcdClient([peer.url], username="node", password="pw")
        kv, _ = await client.get(b"/k")
        await client.close()
    assert kv.value == b"v"
    assert [c.path for c in peer.calls] == [AUTH, RANGE, AUTH, RANGE]


async def test_concurrent_first_calls_authenticate_once():
    async def authenticate(request, headers):
        await asyncio.sleep(0.05)
        return Answer(rpc_pb2.AuthenticateResponse(token="t").SerializeToString())

    async def with_token(request, headers):
        assert headers["token"] == "t"
        return range_answer()

    async with GrpcPeer({AUTH: authenticate, RANGE: with_token}) as peer:
        client = EtcdClient([peer.url], username="node", password="pw")
        await asyncio.gather(*(client.get(b"/k") for _ in range(20)))
        await client.close()
    assert [c.path for c in peer.calls].count(AUTH) == 1 and peer.connections == 1


async def test_an_http1_server_is_named():
    async with GrpcPeer({}, http1=True) as peer:
        client = EtcdClient([peer.url], timeout=2)
        with pytest.raises(
            EtcdUnavailable, match=r"answered in HTTP/1 \(HTTP/1\.1 400 Bad Request"
        ):
            await client.get(b"/k")
        await client.close()


async def test_a_server_that_never_speaks_http2_times_out_and_is_left():
    async with GrpcPeer({}, silent=True) as peer:
        client = EtcdClient([peer.url, "http://127.0.0.1:9"], timeout=0.5)
        with pytest.raises(EtcdUnavailable, match=r"no answer within 0\.5 s"):
            await client.get(b"/k")
        assert client.endpoint.url == "http://127.0.0.1:9"
        await client.close()


async def test_leaving_a_member_lets_the_calls_under_way_finish_there():
    """A call that fails over does not fail the others on that connection: they may well be
    answered (a member without a leader for a moment); only new calls go to the next one."""

    async def slow_range(request, headers):
        await asyncio.sleep(0.3)
        return range_answer(b"from-a")

    async def unavailable(request, headers):
        return Answer(code=14, text="etcdserver: request timed out")

    async with (
        GrpcPeer({RANGE: slow_range, TXN: unavailable}) as a,
        GrpcPeer({RANGE: answer_range}) as b,
    ):
        client = EtcdClient([a.url, b.url])
        under_way = asyncio.create_task(client.get(b"/k"))
        await asyncio.sleep(0.05)
        with pytest.raises(EtcdUnavailable, match="request timed out"):
            await client.put_if(b"/k", b"v", lease=0, mod_revision=0)
        assert client.endpoint.url == b.url
        kv, _ = await under_way  # answered where it was sent
        assert kv.value == b"from-a"
        kv, _ = await client.get(b"/k")  # the next call: the next member
        assert kv.value == b"/k/k"
        await client.close()


async def test_a_call_not_yet_sent_follows_the_client_to_its_next_member():
    """Another call moves the client between this call's choice of member and its dial: the
    call was never sent, so it goes to the member the client uses by then, not failing."""
    async with GrpcPeer({RANGE: answer_range}) as b:
        client = EtcdClient(["http://127.0.0.1:9", b.url])
        transport = client.transport
        dial = transport.channel
        moved = []

        async def meanwhile_moved(ep, generation):
            if not moved:  # once: another call fails over first
                moved.append(ep.url)
                await transport.failover(generation)
            return await dial(ep, generation)

        transport.channel = meanwhile_moved  # type: ignore[method-assign]
        kv, _ = await client.get(b"/k")
        await client.close()
    assert moved == ["http://127.0.0.1:9"] and kv.value == b"/k/k"
