"""The one netlink request loop (kernel/nlsocket.py) against a scripted kernel: an interrupted
dump is read again until whole, an error in DONE is raised, late answers to earlier requests
are skipped. Against the real kernel: tests/integration/test_iproute.py (a dump interrupted on
purpose by thousands of routes added while it runs)."""

import struct

import pytest

from pyflannel.kernel import codec, requests
from pyflannel.kernel.nlsocket import (
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    DumpInterrupted,
    NetlinkError,
    NetlinkSocket,
)


def msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return codec.message(kind, flags, seq, body)


class ScriptedKernel:
    """Answers each sent request with the next scripted list of datagrams (seq filled in)."""

    def __init__(self, script):
        self.script, self.sent, self.pending = list(script), [], []

    def send(self, data: bytes) -> None:
        seq = codec.NLMSG_HDR.unpack_from(data)[3]
        self.sent.append(seq)
        self.pending = [d(seq) for d in self.script.pop(0)]

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)

    def close(self) -> None:
        pass


def socket_with(script) -> NetlinkSocket:
    sock = NetlinkSocket.__new__(NetlinkSocket)
    sock.sock, sock._seq, sock.dumps_interrupted = ScriptedKernel(script), 0, 0
    return sock


def entries(n: int, interrupted: bool = False):
    flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if interrupted else 0)
    return lambda seq: b"".join(msg(24, flags, seq, bytes([i]) * 4) for i in range(n))


def done(code: int = 0, flags: int = NLM_F_MULTI):
    return lambda seq: msg(codec.NLMSG_DONE, flags, seq, struct.pack("=i", -code))


def build(seq: int) -> bytes:
    return requests.dump(seq, codec.RTM_GETROUTE, codec.AF_INET)


def test_an_interrupted_dump_is_read_again_until_whole():
    sock = socket_with(
        [
            [entries(2, interrupted=True), done(flags=NLM_F_MULTI | NLM_F_DUMP_INTR)],
            [entries(3), done()],
        ]
    )
    answers = sock.dump(build)
    assert [bytes(p) for _, _, p in answers] == [bytes([i]) * 4 for i in range(3)]
    assert sock.dumps_interrupted == 1 and len(sock.sock.sent) == 2


def test_a_table_that_never_holds_still_is_said():
    sock = socket_with([[entries(1, interrupted=True), done()]] * NetlinkSocket.DUMP_ATTEMPTS)
    with pytest.raises(DumpInterrupted, match="kept changing"):
        sock.dump(build)


def test_an_error_in_done_is_raised():
    sock = socket_with([[entries(2), done(code=16)]])
    with pytest.raises(NetlinkError) as e:
        sock.dump(build)
    assert e.value.code == 16


def test_late_answers_to_an_earlier_request_are_skipped():
    late = lambda seq: msg(24, NLM_F_MULTI, seq - 1, b"late")  # noqa: E731
    sock = socket_with([[late, entries(1), done()]])
    assert [bytes(p) for _, _, p in sock.request(build)] == [b"\0" * 4]
