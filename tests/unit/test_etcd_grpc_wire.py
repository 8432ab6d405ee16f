"""gRPC's plain-data parts (etcd/grpc_wire.py) and what our own TLS files say about
themselves (etcd/tls.py)."""

import datetime

import pytest

from pyflannel.etcd.grpc_wire import (
    MessageReader,
    Status,
    StatusCode,
    WireError,
    frame,
    request_headers,
    response_problem,
    status_of,
    timeout_value,
)
from pyflannel.etcd.tls import TLSFiles, client_certificate_findings
from testbed.certs import upstream_certs


def test_messages_are_cut_out_of_frames_however_the_bytes_arrive():
    body = frame(b"first") + frame(b"") + frame(b"x" * 70000)
    reader = MessageReader()
    messages = []
    for i in range(0, len(body), 7):
        messages += reader.feed(body[i : i + 7])
    assert messages == [b"first", b"", b"x" * 70000] and not reader.partial


def test_a_message_begun_and_not_finished_is_partial():
    reader = MessageReader()
    assert reader.feed(frame(b"abcdef")[:-2]) == [] and reader.partial


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x01\x00\x00\x00\x01x", "compressed"),
        (b"\x00" + (1 << 30).to_bytes(4, "big"), "a message of 1073741824 bytes"),
    ],
)
def test_what_is_not_our_grpc_is_refused(data, error):
    with pytest.raises(WireError, match=error):
        MessageReader().feed(data)


@pytest.mark.parametrize(
    "seconds, value", [(5, "5000m"), (0.0004, "1m"), (2.5, "2500m"), (10**6, "1000000S")]
)
def test_grpc_timeout_is_at_most_eight_digits_and_never_zero(seconds, value):
    assert timeout_value(seconds) == value


def test_request_headers_carry_grpcs_and_the_metadata_in_lower_case():
    headers = request_headers(
        "10.0.0.5:2379", "/etcdserverpb.KV/Range", tls=True, timeout=3, metadata=(("Token", "t"),)
    )
    assert headers[:4] == [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/etcdserverpb.KV/Range"),
        (":authority", "10.0.0.5:2379"),
    ]
    assert ("te", "trailers") in headers and ("grpc-timeout", "3000m") in headers
    assert ("token", "t") in headers


def test_the_status_message_is_percent_decoded():
    status = status_of(
        [("grpc-status", "7"), ("grpc-message", "etcdserver:%20permission%20denied")]
    )
    assert status == Status(StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


def test_an_unknown_status_code_is_unknown_and_no_status_is_none():
    assert status_of([("grpc-status", "99")]) == Status(StatusCode.UNKNOWN, "")
    assert status_of([(":status", "200")]) is None


@pytest.mark.parametrize(
    "headers, code",
    [
        ([(":status", "503")], StatusCode.UNAVAILABLE),  # a proxy with no member behind it
        ([(":status", "404")], StatusCode.UNIMPLEMENTED),
        ([(":status", "200"), ("content-type", "text/html")], StatusCode.UNKNOWN),
    ],
)
def test_an_answer_that_is_not_grpc_is_a_problem(headers, code):
    problem = response_problem(headers)
    assert problem is not None and problem.code == code


def test_a_grpc_answer_is_no_problem():
    assert response_problem([(":status", "200"), ("content-type", "application/grpc")]) is None


def test_a_certificate_for_server_authentication_only_is_named_as_a_client_certificate():
    up = upstream_certs()
    findings = client_certificate_findings(TLSFiles(str(up.ca), str(up.server_cert)))
    assert findings == [
        "its extended key usage is server authentication (serverAuth), without client "
        "authentication (clientAuth): reissue it with clientAuth"
    ]


def test_a_good_client_certificate_has_no_finding_and_an_expired_one_says_when():
    up = upstream_certs()
    files = TLSFiles(str(up.ca), str(up.client_cert))
    assert client_certificate_findings(files, now=datetime.datetime(2026, 12, 6)) == []
    later = datetime.datetime(2028, 1, 1)
    assert client_certificate_findings(files, now=later) == ["it expired on 2027-08-18"]


def test_the_tls_context_is_made_again_only_when_a_file_changed(tmp_path):
    import os
    import shutil

    from pyflannel.etcd.tls import ContextCache

    up = upstream_certs()
    ca = tmp_path / "ca.pem"
    shutil.copy(up.ca, ca)
    cache = ContextCache(TLSFiles(str(ca), str(up.client_cert), str(up.client_key)))
    first = cache.get()
    assert cache.get() is first  # a reconnect loop reads no file
    os.utime(ca, ns=(0, os.stat(ca).st_mtime_ns + 10**9))  # a rotated file
    assert cache.get() is not first
