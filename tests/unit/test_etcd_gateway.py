"""How the etcd client reads the JSON gateway's answers (pure parts of etcd/client.py); the
client against a real etcd is tests/integration/test_etcd_*.py."""

import base64

import pytest

from pyflannel.etcd.client import _decode, _error_of, _kv, _Refused, prefix_end


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_int64s_come_as_strings_and_zeros_are_left_out():
    kv = _kv({"key": b64(b"/k"), "mod_revision": "7", "create_revision": "3", "version": "2"})
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease) == (
        b"/k",
        b"",
        7,
        3,
        2,
        0,
    )


def test_a_unary_error_carries_its_grpc_code():
    body = b'{"error":"etcdserver: lease already exists","message":"etcdserver: lease already exists","code":9}'
    with pytest.raises(_Refused) as e:
        _decode(412, body)
    assert e.value.code == 9 and "lease already exists" in str(e.value)


def test_a_stream_error_carries_its_grpc_code():
    error = _error_of({"error": {"grpc_code": 14, "http_code": 503, "message": "no leader"}})
    assert error is not None and error.code == 14 and str(error) == "no leader"


@pytest.mark.parametrize(
    "status, body",
    [
        (502, b"<html>Bad Gateway</html>"),  # a proxy's page
        (200, b'["not", "an", "object"]'),
        (200, b'{"header": {"revis'),  # cut off
        (500, b"{}"),  # an error without etcd's error fields
    ],
)
def test_what_is_not_etcds_answer_means_the_member_cannot_serve(status, body):
    with pytest.raises(_Refused) as e:
        _decode(status, body)
    assert e.value.code == 14  # UNAVAILABLE: try again, maybe on another member


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end(b"/coreos.com/network/subnets/") == b"/coreos.com/network/subnets0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


async def test_a_kept_alive_connection_closed_by_the_server_is_redialled_not_failed_over():
    # A server that answers once per connection and then closes it, without saying so
    # (as a member restarting between two calls does): the next call finds its pooled
    # connection dead, dials afresh, and the client stays on this endpoint.
    import asyncio

    from pyflannel.etcd.client import EtcdClient

    answer = b'{"header":{"revision":"42"}}'
    connections = 0

    async def serve(reader, writer):
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = EtcdClient([f"http://127.0.0.1:{port}", "http://127.0.0.1:9"], timeout=2)
    try:
        for _ in range(3):
            assert (await client.get(b"/k")) == (None, 42)
            await asyncio.sleep(0.05)  # the server's close has arrived
        assert connections == 3 and client.endpoint.url.endswith(f":{port}")
    finally:
        await client.close()
        server.close()
