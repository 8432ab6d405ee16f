"""One UDP data-path worker: a process that owns one queue of the multi-queue TUN and one
socket of the ``SO_REUSEPORT`` group and forwards between them (forwarder.py). Processes, not
threads: the packet loops are Python, and one interpreter runs Python on one core at a time.

    python -m pyflannel.backend.udp.worker --index I --tun-fd T --sock-fd S --control-fd C \
        --mtu M [--datapath D] [--fastpath] [--priority P] [-v N]

The daemon opens the descriptors (it holds the privileges and reports the errors) and talks to
the worker over the control socket, one JSON object per line each way:

    daemon -> worker  {"table": [[subnet, public_ip, port], ...]}   the forwarding table
                      {"local": [subnet, network]}                 our lease
                      {"start": true}                              forward (sent once,
                                                                   after table and lease)
                      {"snapshot": n}                              counters, please
    worker -> daemon  {"snapshot": n, "stats": {...}}

End of file on the control socket (the daemon stopped, or died) stops the worker; a worker whose
packet loop dies exits with status 1 and the daemon's reconciler restarts the path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend.udp import priority, tun
from pyflannel.backend.udp.forwarder import Forwarder
from pyflannel.backend.udp.routes import ForwardingTable

log = logging.getLogger(__name__)


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def table_message(entries) -> dict:
    return {"table": [[str(subnet), str(ip), port] for subnet, ip, port in entries]}


def apply(forwarder: Forwarder, message: dict) -> dict | None:
    """Carry out one control message; the reply to send, if any."""
    if "table" in message:
        forwarder.table = ForwardingTable.build(
            (IPv4Network(subnet), IPv4Address(ip), int(port))
            for subnet, ip, port in message["table"]
        )
    if "local" in message:
        subnet, network = message["local"]
        forwarder.set_local(IPv4Network(subnet), IPv4Network(network))
    if "snapshot" in message:
        return {"snapshot": message["snapshot"], "stats": forwarder.snapshot()}
    return None


def serve(lines, control: socket.socket, forwarder: Forwarder, outcome: list) -> None:
    """Carry out control messages until end of file (or, before the forwarder runs, until
    the start message); ``outcome`` gets why it stopped: None for end of file."""
    try:
        for line in lines:
            message = json.loads(line)
            reply = apply(forwarder, message)
            if reply is not None:
                control.sendall(encode(reply))
            if message.get("start"):
                outcome.append("start")
                return
        outcome.append(None)
    except Exception as e:  # a bug: exit, and the daemon restarts the path
        log.exception("control channel failed")
        outcome.append(f"control channel: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pyflannel UDP data-path worker (internal)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--tun-fd", type=int, required=True)
    parser.add_argument("--sock-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--mtu", type=int, required=True)
    parser.add_argument("--datapath", default="auto")
    parser.add_argument("--fastpath", action="store_true")
    parser.add_argument("--priority", default="normal", choices=priority.CHOICES)
    parser.add_argument("-v", type=int, default=0)
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pyflannel.log import setup_logging

    setup_logging(args.v)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerName(args.index))
    sock = socket.socket(fileno=args.sock_fd)
    sock.setblocking(False)
    control = socket.socket(fileno=args.control_fd)
    control.setblocking(True)
    forwarder = Forwarder(
        args.tun_fd,
        sock,
        args.mtu,
        args.datapath,
        args.fastpath,
        args.priority,
    )
    if args.fastpath:
        forwarder.offer_tso()
    else:  # the device keeps offloads a fast-path run set: without a vnet header, none
        with contextlib.suppress(OSError):
            tun.set_offload(args.tun_fd, 0)
    lines = control.makefile("rb")
    outcome: list = []
    serve(lines, control, forwarder, outcome)  # no packet moves before table and lease are in
    if outcome != ["start"]:
        return 0 if outcome == [None] else 1
    forwarder.start()
    outcome.clear()
    reader = threading.Thread(target=serve, args=(lines, control, forwarder, outcome), daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(priority.WINDOW)
        forwarder.priority.watch()
        if not forwarder.alive:
            log.error("data path stopped: %s", forwarder.failed or "a packet thread exited")
            return 1
    forwarder.stop()
    return 0 if outcome == [None] else 1


class _WorkerName(logging.Filter):
    def __init__(self, index: int):
        super().__init__()
        self.suffix = f"[worker {index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name = f"{record.name}{self.suffix}"
        return True


if __name__ == "__main__":
    sys.exit(main())
