"""The etcd client's gRPC means, measured as the Debian package runs it: Debian 12's own
``/usr/bin/python3`` with Debian's ``python3-h2`` 4.1, ``python3-protobuf`` 3.21 and
``python3-grpcio`` 1.51, against a local etcd, alternating, repeated.

    sudo python3 bench/etcd_client.py [--runs 15]

Per means, in a fresh process each run: what its import adds to a process that has asyncio,
logging and etcd's generated messages loaded already (h2: h2 and the client's own modules;
grpcio: grpc and grpc.aio), the process's RSS and threads after one connection, a Range and an established watch, and the
median of 200 sequential Ranges. ``h2``: pyflannel's own client (etcd/channel.py on h2);
``grpcio``: grpc.aio's channel with the same generated messages (what the client would be on
Debian's grpcio). Medians; writes bench/results/etcd_client.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
KEY = b"/coreos.com/network/config"


def _rss_threads() -> tuple[float, int]:
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss / 2**20, len(os.listdir("/proc/self/task"))


async def _h2(url: str) -> dict:
    t0 = time.perf_counter()
    from pyflannel.etcd.client import EtcdClient  # h2 and the client's own modules

    imported = time.perf_counter() - t0
    client = EtcdClient([url])
    kv, revision = await client.get(KEY)
    assert kv is not None
    watch = client.watch_prefix(b"/coreos.com/network/", revision + 1)
    assert (await anext(watch)).created
    rss, threads = _rss_threads()
    ranges = []
    for _ in range(200):
        s = time.perf_counter()
        await client.get(KEY)
        ranges.append(time.perf_counter() - s)
    await watch.aclose()
    await client.close()
    return {
        "import_ms": imported * 1000,
        "rss_mb": rss,
        "threads": threads,
        "range_ms": statistics.median(ranges) * 1000,
    }


async def _grpcio(url: str) -> dict:
    t0 = time.perf_counter()
    import grpc
    import grpc.aio

    imported = time.perf_counter() - t0
    from pyflannel.etcd.proto import rpc_pb2

    channel = grpc.aio.insecure_channel(url.removeprefix("http://"))
    get = channel.unary_unary(
        "/etcdserverpb.KV/Range",
        request_serializer=rpc_pb2.RangeRequest.SerializeToString,
        response_deserializer=rpc_pb2.RangeResponse.FromString,
    )
    reply = await get(rpc_pb2.RangeRequest(key=KEY), timeout=5)
    assert reply.kvs
    watch = channel.stream_stream(
        "/etcdserverpb.Watch/Watch",
        request_serializer=rpc_pb2.WatchRequest.SerializeToString,
        response_deserializer=rpc_pb2.WatchResponse.FromString,
    )
    create = rpc_pb2.WatchCreateRequest(
        key=b"/coreos.com/network/",
        range_end=b"/coreos.com/network0",
        start_revision=reply.header.revision + 1,
        progress_notify=True,
    )
    call = watch(metadata=(("hasleader", "true"),))
    await call.write(rpc_pb2.WatchRequest(create_request=create))
    assert (await call.read()).created
    rss, threads = _rss_threads()
    ranges = []
    for _ in range(200):
        s = time.perf_counter()
        await get(rpc_pb2.RangeRequest(key=KEY), timeout=5)
        ranges.append(time.perf_counter() - s)
    call.cancel()
    await channel.close()
    return {
        "import_ms": imported * 1000,
        "rss_mb": rss,
        "threads": threads,
        "range_ms": statistics.median(ranges) * 1000,
    }


def one(means: str, url: str) -> None:
    """A measuring process (run by ``main`` under Debian's python3)."""
    import asyncio
    import logging  # noqa: F401 - what the daemon has loaded before its etcd client

    sys.path.insert(0, str(ROOT))
    import pyflannel.etcd.proto.rpc_pb2
    import pyflannel.subnet.stores  # noqa: F401

    print(json.dumps(asyncio.run(_h2(url) if means == "h2" else _grpcio(url))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--one", nargs=2, metavar=("MEANS", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import table, write_results
    from testbed.etcd import EtcdServer

    versions = subprocess.run(
        [
            DEBIAN_PYTHON,
            "-c",
            "import sys, grpc, h2, google.protobuf as p; "
            "print(sys.version.split()[0], grpc.__version__, h2.__version__, p.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    results: dict[str, list[dict]] = {"h2": [], "grpcio": []}
    with EtcdServer() as etcd:
        etcd.put(KEY.decode(), '{"Network": "10.1.0.0/16"}')
        for _ in range(args.runs):
            for means in results:
                out = subprocess.run(
                    [DEBIAN_PYTHON, "-I", __file__, "--one", means, etcd.url],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd="/",
                ).stdout
                results[means].append(json.loads(out))
    figures = ("import_ms", "rss_mb", "threads", "range_ms")
    medians = {
        means: {f: statistics.median(r[f] for r in runs) for f in figures}
        for means, runs in results.items()
    }
    rows = [[means, *(medians[means][f] for f in figures)] for means in results]
    rows.append(["h2 / grpcio", *(medians["h2"][f] / medians["grpcio"][f] for f in figures)])
    text = table(["means", "import ms", "RSS MB", "threads", "Range ms (median of 200)"], rows)
    text += (
        f"\n\nDebian 12's python3 {versions[0]}, python3-grpcio {versions[1]}, "
        f"python3-h2 {versions[2]}, python3-protobuf {versions[3]}; {args.runs} runs each, medians\n"
    )
    print(text)
    write_results(
        "etcd_client",
        {"runs": args.runs, "versions": versions, "results": results, "medians": medians},
        text,
    )


if __name__ == "__main__":
    main()
