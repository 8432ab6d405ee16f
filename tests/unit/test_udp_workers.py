"""The UDP worker processes' plumbing that is pure logic: control messages applied to a
forwarder, and the workers' counters merged into one view. (The processes themselves, their
TUN queues and steering are tested end to end in tests/e2e/test_udp_cluster.py.)"""

import socket
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network

import pyflannel
from pyflannel.backend.udp.forwarder import Forwarder
from pyflannel.backend.udp.pool import merge, worker_environment
from pyflannel.backend.udp.worker import apply, encode, table_message


def snapshot(to=0, frm=0, drops=None, tx=True, rx=True, off=None, peers=1, tso=True):
    return {
        "datapath": "asyncio",
        "to_peers": {"packets": to, "bytes": 100 * to, "drops": drops or {}},
        "from_peers": {"packets": frm, "bytes": 100 * frm, "drops": {}},
        "icmp_unreachable_sent": 1,
        "fastpath": {"tx": tx, "rx": rx, "tso": tso, "off": off or {}},
        "peers": peers,
        "time": 0,
    }


def test_counters_and_drops_are_summed_over_the_workers():
    total = merge(
        [snapshot(5, 7, {"no_route": 2}), snapshot(1, 3, {"no_route": 1, "ttl": 4})], [10, 11]
    )
    assert total["workers"] == 2
    assert total["to_peers"] == {"packets": 6, "bytes": 600, "drops": {"no_route": 3, "ttl": 4}}
    assert total["from_peers"]["packets"] == 10
    assert total["icmp_unreachable_sent"] == 2
    assert total["per_worker"] == [
        {"pid": 10, "to_peers": 5, "from_peers": 7},
        {"pid": 11, "to_peers": 1, "from_peers": 3},
    ]
    assert "unanswered" not in total


def test_the_fast_path_is_on_only_where_every_worker_has_it():
    total = merge([snapshot(), snapshot(tx=False, off={"tx": "UDP_SEGMENT refused: EIO"})], [1, 2])
    assert total["fastpath"] == {
        "tx": False,
        "rx": True,
        "tso": True,
        "off": {"tx": "UDP_SEGMENT refused: EIO"},
    }
    no_tso = merge([snapshot(), snapshot(tso=False, off={"tso": "numpy is not installed"})], [1, 2])
    assert no_tso["fastpath"]["tso"] is False


def test_the_packet_threads_are_real_time_only_where_every_workers_is():
    def prio(realtime=True, demotions=0, refused=""):
        return {
            "mode": "realtime",
            "realtime": realtime,
            "raised": 0,
            "demotions": demotions,
            "refused": refused,
        }

    total = merge(
        [snapshot() | {"priority": prio()}, snapshot() | {"priority": prio(False, 2)}], [1, 2]
    )
    assert total["priority"] == {
        "mode": "realtime",
        "realtime": False,
        "raised": 0,
        "demotions": 2,
        "refused": "",
    }
    refused = merge(
        [snapshot() | {"priority": prio(False, refused="SCHED_RR refused: EPERM")}], [1]
    )
    assert refused["priority"]["refused"] == "SCHED_RR refused: EPERM"
    assert merge([snapshot()], [1])["priority"] is None  # a worker of an older pyflannel


def test_a_worker_that_does_not_answer_is_reported_not_guessed():
    total = merge([snapshot(4, 4), None], [1, 2])
    assert total["unanswered"] == 1
    assert total["to_peers"]["packets"] == 4
    assert total["per_worker"][1] == {"pid": 2, "to_peers": None, "from_peers": None}
    nobody = merge([None], [1])
    assert nobody["fastpath"]["tx"] is False and nobody["datapath"] is None


def test_control_messages_set_the_table_and_the_lease_and_answer_snapshots():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fwd = Forwarder(a.fileno(), sock, 1472)
        entries = [(IPv4Network("10.1.2.0/24"), IPv4Address("192.0.2.2"), 8285)]
        message = table_message(entries)
        assert encode(message).endswith(b"\n") and b"\n" not in encode(message)[:-1]
        assert apply(fwd, message) is None
        assert fwd.table.lookup(int(IPv4Address("10.1.2.9"))) == ("192.0.2.2", 8285)
        assert apply(fwd, {"local": ["10.1.1.0/24", "10.1.0.0/16"]}) is None
        assert fwd.local_net == int(IPv4Address("10.1.1.0"))
        assert fwd.icmp_source == int(IPv4Address("10.1.0.0"))
        reply = apply(fwd, {"snapshot": 7})
        assert reply["snapshot"] == 7 and reply["stats"]["peers"] == 1
    finally:
        for s in (a, b, sock):
            s.close()


def test_a_channel_queues_a_large_table_for_a_busy_worker_without_blocking_the_caller():
    """Channel.send only queues (a writer thread writes): the daemon's event loop never
    waits for a worker to read. Before, a table larger than the socket buffer blocked the
    caller up to the send timeout and then broke the channel."""
    import json
    import socket

    from pyflannel.backend.udp.pool import SEND_TIMEOUT, Channel

    ours, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    big = {"table": ["10.1.0.0/24 198.51.100.1 8285"] * 200_000}  # ~6 MB of JSON
    channel.send(big)
    channel.send({"start": True})
    assert channel.broken is None  # nothing was written yet by the caller itself
    received = b""
    worker_end.settimeout(SEND_TIMEOUT)
    while received.count(b"\n") < 2:
        received += worker_end.recv(1 << 20)
    first, second = received.split(b"\n")[:2]
    assert json.loads(first) == big and json.loads(second) == {"start": True}
    channel.close()
    worker_end.close()


def test_a_snapshot_whose_channel_is_closed_under_it_gets_no_answer_and_no_exception():
    """The reconciler restarts a path (closing its channels) while the drop report's snapshot
    waits for the workers' answers: that snapshot gets none. It raised before (select() on a
    closed socket), and the exception stopped the daemon."""
    import socket
    import time

    from pyflannel.backend.udp.pool import Channel

    ours, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    channel.close()
    assert channel.reply({"snapshot": 1}, "snapshot", time.monotonic() + 0.2) is None
    assert channel.broken == "control socket closed"
    worker_end.close()


async def test_a_drop_report_that_cannot_read_the_counters_says_so_and_goes_on(caplog):
    import asyncio

    from pyflannel.ops.datapath_report import report_drops

    calls = []

    async def stats():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("the path restarted under the snapshot")
        return {"to_peers": {"drops": {"no_route": len(calls)}}, "from_peers": {"drops": {}}}

    task = asyncio.create_task(report_drops(stats, every=0.01))
    while len(calls) < 3 and not task.done():
        await asyncio.sleep(0.01)
    assert not task.done(), task.exception()  # it went on
    task.cancel()
    assert "its counters could not be read: the path restarted" in caplog.text
    assert "dropped packets" in caplog.text


def test_workers_import_the_daemons_own_pyflannel_wherever_it_is_installed(tmp_path):
    """The Debian package keeps pyflannel in a private directory: a worker started with
    ``python -m`` from elsewhere must still find that copy, before any other (``-S``: not
    through this checkout's editable install)."""
    env = worker_environment({"PYTHONPATH": "/elsewhere", "PATH": "/usr/bin:/bin"})
    home = env["PYTHONPATH"].split(":")[0]
    assert env["PYTHONPATH"].split(":")[1:] == ["/elsewhere"]
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import pyflannel; print(pyflannel.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == pyflannel.__file__ and where.startswith(home + "/")
