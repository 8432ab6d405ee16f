"""The daemon's route-netlink socket, and the one request loop every exchange with the kernel
goes through: a request's answers until its ack or its DONE (an error in either raised, in
the kernel's own words: extended acks), dumps read again when the kernel marks them
interrupted (NLM_F_DUMP_INTR: something changed during the dump, so the answer may miss
entries), many requests per system call, and notifications for the kernel watch.
Not thread-safe: one per thread (the netlink thread owns the daemon's)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from pyflannel.kernel import codec

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLM_F_MULTI, NLM_F_DUMP_INTR = 0x2, 0x10
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1

Answer = tuple[int, int, memoryview]  # (message type, flags, payload)


class NetlinkError(OSError):
    """The kernel refused a request: ``code`` is the errno, ``args[1]`` the kernel's own
    explanation when it gave one (extended ack), else the errno's text."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(code, message or os.strerror(code))
        self.code = code


def error_of(payload: memoryview, flags: int, done: bool = False) -> NetlinkError | None:
    """The error an NLMSG_ERROR (or an NLMSG_DONE) carries, None for an ack (or a clean end).
    After NLMSG_ERROR's code comes the request it answers (its header only, if capped), then
    the kernel's own sentence; after NLMSG_DONE's code the sentence directly."""
    if len(payload) < 4:
        return None
    code = codec.error_code(payload)
    if not code:
        return None
    text = ""
    if flags & NLM_F_ACK_TLVS:
        offset = 4
        if not done:
            echoed = codec.NLMSG_HDR.size
            if not flags & NLM_F_CAPPED:  # a kernel that would not cap: the whole request
                echoed = max(echoed, codec.NLMSG_HDR.unpack_from(payload, 4)[0])
            offset += (echoed + 3) & ~3
        tlvs = codec.attributes(payload, offset)
        if NLMSGERR_ATTR_MSG in tlvs:
            text = bytes(tlvs[NLMSGERR_ATTR_MSG]).split(b"\0", 1)[0].decode(errors="replace")
    return NetlinkError(code, text)


class DumpInterrupted(NetlinkError):
    """The kernel kept changing the table while it was dumped, DUMP_ATTEMPTS times running."""


class NetlinkSocket:
    DUMP_ATTEMPTS = 5  # an interrupted dump is read again this many times at most
    CHUNK = 256  # requests per datagram in ``execute``; their acks must fit the buffer
    BATCH = 64  # datagrams per ``notifications`` read: a burst does not hold the loop

    def __init__(self, groups: int = 0, rcvbuf: int = 4 << 20, nonblocking: bool = False):
        flags = socket.SOCK_NONBLOCK if nonblocking else 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | flags, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass  # an old kernel: errors without the kernel's sentence
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0
        self.dumps_interrupted = 0  # dumps read again (the kernel said: interrupted)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def request(self, build: Callable[[int], bytes]) -> list[Answer]:
        """Send ``build(seq)``; its answers until its ack, its DONE, or its error (raised)."""
        answers, _ = self._exchange(build)
        return answers

    def dump(self, build: Callable[[int], bytes]) -> list[Answer]:
        """A dump request's answers, whole: read again while the kernel marks it interrupted."""
        for _ in range(self.DUMP_ATTEMPTS):
            answers, interrupted = self._exchange(build)
            if not interrupted:
                return answers
            self.dumps_interrupted += 1
        raise DumpInterrupted(
            4, f"the kernel's table kept changing during {self.DUMP_ATTEMPTS} dumps in a row"
        )

    def _exchange(self, build: Callable[[int], bytes]) -> tuple[list[Answer], bool]:
        seq = self.next_seq()
        self.sock.send(build(seq))
        answers: list[Answer] = []
        interrupted = False
        while True:
            for kind, flags, msg_seq, payload in codec.messages(self.sock.recv(1 << 20)):
                if msg_seq != seq:
                    continue  # a late answer to an earlier request
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind in (codec.NLMSG_ERROR, codec.NLMSG_DONE):
                    error = error_of(payload, flags, done=kind == codec.NLMSG_DONE)
                    if error is not None:
                        raise error
                    return answers, interrupted
                answers.append((kind, flags, payload))
                if not flags & NLM_F_MULTI:  # a single answer: no DONE follows
                    return answers, interrupted

    def execute(self, requests: list[tuple[int, bytes]]) -> dict[int, int]:
        """Send (seq, message) requests with NLM_F_ACK, many per system call; the errno of
        each (0 for success), by seq."""
        results: dict[int, int] = {}
        for start in range(0, len(requests), self.CHUNK):
            chunk = requests[start : start + self.CHUNK]
            self.sock.send(b"".join(message for _, message in chunk))
            waiting = {seq for seq, _ in chunk}
            while waiting:
                for kind, _, seq, payload in codec.messages(self.sock.recv(1 << 20)):
                    if kind == codec.NLMSG_ERROR and seq in waiting:
                        results[seq] = codec.error_code(payload)
                        waiting.discard(seq)
        return results

    def notifications(self) -> list[tuple[int, memoryview]]:
        """(type, payload) of the notifications waiting, up to BATCH datagrams (the socket
        stays readable for the rest); ENOBUFS, when the kernel dropped some, is raised."""
        found: list[tuple[int, memoryview]] = []
        for _ in range(self.BATCH):
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            found += [(kind, payload) for kind, _, _, payload in codec.messages(data)]
        return found
