"""Operator-facing plumbing: journald log lines, sd_notify datagrams, once-per-outage logs."""

import logging
import socket

from pyflannel.backoff import Backoff, Outage
from pyflannel.log import setup_logging
from pyflannel.ops import sd_notify


def test_journald_lines_carry_a_priority_and_no_timestamp(monkeypatch, capsys):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging(0)
    logging.getLogger("pyflannel.app.daemon").warning("etcd unreachable")
    logging.getLogger("pyflannel.app.daemon").debug("hidden at -v 0")
    assert capsys.readouterr().err == "<4>daemon: etcd unreachable\n"


def test_terminal_lines_have_time_and_level(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging(1)
    logging.getLogger("pyflannel.control.lease_keeper").debug("renewing")
    err = capsys.readouterr().err
    assert err.endswith(" DEBUG   lease_keeper: renewing\n") and err[:4].isdigit()


def test_v_10_is_pyflannels_verbosity_libraries_stay_at_warning(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("PYFLANNEL_DEBUG_LIBRARIES", raising=False)
    setup_logging(10)
    library = logging.getLogger("pyroute2.netlink.core")
    library.setLevel(logging.DEBUG)  # what a library may do to itself on import
    library.debug("message {'attrs': ...}")
    library.warning("a library warning")
    logging.getLogger("pyflannel.app.daemon").debug("ours")
    err = capsys.readouterr().err
    assert "message" not in err and "a library warning" in err and "ours" in err
    library.setLevel(logging.NOTSET)


def test_library_debug_only_when_asked_for(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setenv("PYFLANNEL_DEBUG_LIBRARIES", "pyroute2")
    setup_logging(1)
    logging.getLogger("pyroute2.netlink.core").debug("netlink detail")
    logging.getLogger("asyncio").debug("asyncio detail")
    err = capsys.readouterr().err
    assert "netlink detail" in err and "asyncio detail" not in err
    logging.getLogger("pyroute2").setLevel(logging.NOTSET)


def test_notify_sends_one_datagram_to_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert sd_notify.notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
        assert server.recv(1024) == b"READY=1\nSTATUS=ok"


def test_notify_supports_abstract_sockets():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0pyflannel-test-notify")
        assert sd_notify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@pyflannel-test-notify"})
        assert server.recv(1024) == b"STOPPING=1"


def test_notify_without_systemd_is_a_no_op():
    assert sd_notify.notify("READY=1", {}) is False


def test_an_outage_is_logged_once_at_start_and_once_at_the_end(caplog):
    caplog.set_level(logging.DEBUG)
    clock = iter([0.0, 12.5]).__next__
    outage = Outage(logging.getLogger("t"), "etcd unreachable", clock=clock)
    for _ in range(50):
        outage.failed("connection refused")
    assert outage.ok() == 12.5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "connection refused; retrying" in warnings[0].getMessage()
    assert len(infos) == 1 and "recovered after 12.5 s (50 failed tries)" in infos[0].getMessage()
    assert outage.ok() is None  # nothing to report when there was no outage


def test_backoff_grows_to_its_cap_and_resets():
    b = Backoff(first=1, cap=8)
    delays = [b.next() for _ in range(6)]
    assert 0.8 <= delays[0] <= 1.2 and all(6.4 <= d <= 9.6 for d in delays[3:])
    b.reset()
    assert b.next() <= 1.2
