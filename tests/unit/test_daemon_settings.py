"""The tools typed beside a running daemon take its store settings (ops/daemon_settings.py):
which daemon, and where its password is read from (the pure parts; end to end:
tests/e2e/test_tools_beside_daemon.py)."""

from ipaddress import IPv4Address

import pytest

from pyflannel.ops.daemon_settings import (
    DaemonSettingsError,
    choose,
    password_in_environment,
    password_on_command_line,
    settings_of,
)
from pyflannel.ops.status.document import StatusDoc


@pytest.mark.parametrize(
    "args, found",
    [
        ([b"pyflannel", b"run", b"--etcd-password=s3cret"], "s3cret"),
        ([b"pyflannel", b"run", b"--etcd-password", b"s3cret"], "s3cret"),
        ([b"flanneld", b"-etcd-password=go-style"], "go-style"),
        ([b"x", b"--etcd-password=first", b"--etcd-password=last"], "last"),
        ([b"x", b"--etcd-password="], ""),
        ([b"x", b"--etcd-username=u"], None),
        ([b"x", b"--etcd-password"], None),
    ],
)
def test_the_password_on_a_command_line(args, found):
    assert password_on_command_line(b"\0".join(args) + b"\0") == found


def test_the_password_in_an_environment():
    environ = b"PATH=/bin\0FLANNELD_ETCD_PASSWORD=a=b\0HOME=/root\0"
    assert password_in_environment(environ) == "a=b"
    assert password_in_environment(b"PATH=/bin\0") is None


def doc(pid: int, prefix: str, network: str, password_in: str = "") -> StatusDoc:
    """A daemon's status document as the tools read it off its /status."""
    return StatusDoc.parse(
        {
            "daemon": {"running": True, "pid": pid},
            "store": "etcd",
            "etcd": {"current": "https://10.0.0.5:2379"},
            "network": network,
            "instance": {
                "etcd_prefix": prefix,
                "subnet_file": f"/run/flannel/{pid}.env",
                "healthz": "127.0.0.1:8471",
                "others": [],
                "access": {
                    "endpoints": ["https://10.0.0.5:2379"],
                    "cafile": "/etc/ca.pem",
                    "certfile": "",
                    "keyfile": "",
                    "username": "u",
                    "password_in": password_in,
                },
            },
        }
    )


def test_the_daemon_of_the_prefix_then_of_the_addresses_then_the_first():
    a, b = doc(1, "/coreos.com/network", "10.1.0.0/16"), doc(2, "/net-b", "10.12.0.0/16")
    assert choose([a, b], "/net-b") is b
    assert choose([a, b], None, [IPv4Address("10.12.3.4")]) is b
    assert choose([a, b], None, [IPv4Address("192.0.2.1")]) is a
    assert choose([a, b], "/elsewhere") is None and choose([], None) is None


def test_settings_read_the_password_where_the_daemon_says_it_is(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "environ").write_bytes(b"FLANNELD_ETCD_PASSWORD=pw\0")
    settings = settings_of(doc(7, "/net-b", "10.12.0.0/16", "FLANNELD_ETCD_PASSWORD"), tmp_path)
    store = settings.store
    assert (store.endpoints, store.prefix, store.cafile, store.username, store.password) == (
        ("https://10.0.0.5:2379",),
        "/net-b",
        "/etc/ca.pem",
        "u",
        "pw",
    )
    assert settings.endpoint.subnet_file == "/run/flannel/7.env"


def test_a_password_that_cannot_be_read_is_said_with_what_to_do(tmp_path):
    with pytest.raises(
        DaemonSettingsError, match=r"in its command line \(pid 9\).*give --etcd-password"
    ):
        settings_of(doc(9, "/net-b", "10.12.0.0/16", "--etcd-password"), tmp_path)
