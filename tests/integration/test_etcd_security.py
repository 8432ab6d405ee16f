"""etcd over TLS with client certificates, and with username/password: the happy paths, and
clear errors (never a silent plaintext fallback) for a wrong CA, a missing client
certificate, plaintext against a TLS server, and a wrong password."""

import shutil
import subprocess

import pytest

from pyflannel.etcd.client import EtcdClient, EtcdError, EtcdUnavailable, TLSFiles
from testbed.certs import make_certs
from testbed.etcd import EtcdServer
from tests.conftest import require, require_etcd


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    require(shutil.which("openssl") is not None, "the openssl command")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_etcd(certs):
    require_etcd()
    with EtcdServer(certs=certs) as server:
        yield server


@pytest.fixture(scope="module")
def auth_etcd():
    require_etcd()
    with EtcdServer() as server:
        server.enable_auth("s3cret")
        server.ctl("user", "add", "flannel:flannel-pw")
        server.ctl("role", "add", "flannel")
        server.ctl(
            "role",
            "grant-permission",
            "flannel",
            "--prefix=true",
            "readwrite",
            "/coreos.com/network/",
        )
        server.ctl("user", "grant-role", "flannel", "flannel")
        yield server


async def test_tls_with_client_certificate(tls_etcd, certs):
    assert tls_etcd.url.startswith("https://")
    client = EtcdClient(
        [tls_etcd.url], tls=TLSFiles(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    )
    await client.put(b"/tls/k", b"v")
    kv, _ = await client.get(b"/tls/k")
    assert kv.value == b"v"
    await client.close()


async def test_tls_with_the_wrong_ca_is_refused(tls_etcd, certs, tmp_path):
    other = make_certs(tmp_path, name="otherca")
    client = EtcdClient(
        [tls_etcd.url],
        timeout=2,
        tls=TLSFiles(str(other.ca), str(certs.client_cert), str(certs.client_key)),
    )
    with pytest.raises(
        EtcdUnavailable, match=f"etcd at {tls_etcd.url}.*TLS failed: check --etcd-cafile"
    ):
        await client.get(b"/tls/k")
    await client.close()


async def test_tls_without_a_client_certificate_is_refused(tls_etcd, certs):
    client = EtcdClient([tls_etcd.url], timeout=2, tls=TLSFiles(str(certs.ca)))
    with pytest.raises(EtcdUnavailable, match=f"etcd at {tls_etcd.url}"):
        await client.get(b"/tls/k")
    await client.close()


async def test_plaintext_against_a_tls_server_fails_instead_of_downgrading(tls_etcd):
    client = EtcdClient([tls_etcd.url.replace("https://", "http://")], timeout=2)
    with pytest.raises(EtcdUnavailable):
        await client.get(b"/tls/k")
    await client.close()


async def test_username_and_password(auth_etcd):
    client = EtcdClient([auth_etcd.url], username="flannel", password="flannel-pw")
    await client.put(b"/coreos.com/network/config", b"{}")
    kv, _ = await client.get(b"/coreos.com/network/config")
    assert kv.value == b"{}"
    with pytest.raises(EtcdError, match="permission denied"):
        await client.put(b"/elsewhere", b"x")
    await client.close()


async def test_a_wrong_password_is_a_clear_error(auth_etcd):
    client = EtcdClient([auth_etcd.url], username="flannel", password="wrong", timeout=2)
    with pytest.raises(EtcdError, match=f"etcd at {auth_etcd.url}.*authentication failed"):
        await client.get(b"/coreos.com/network/config")
    await client.close()


async def test_no_credentials_against_auth_is_refused(auth_etcd):
    client = EtcdClient([auth_etcd.url], timeout=2)
    with pytest.raises(EtcdError, match=r"user name is empty|permission denied"):
        await client.get(b"/coreos.com/network/config")
    await client.close()


async def test_a_refused_watch_keeps_retrying_and_recovers_once_permitted(auth_etcd, caplog):
    import asyncio
    import logging
    from ipaddress import IPv4Network

    from pyflannel.control.peer_watch import PeerWatch
    from pyflannel.etcd.store import EtcdSubnetManager
    from pyflannel.subnet.table import LeaseTable

    auth_etcd.ctl("user", "add", "late:late-pw")
    auth_etcd.ctl("role", "add", "late")
    auth_etcd.ctl("user", "grant-role", "late", "late")
    auth_etcd.put(
        "/late/network/subnets/10.1.2.0-24", '{"PublicIP":"198.51.100.2","PublicIPv6":null}'
    )
    seen = []

    async def on_changes(changes):
        seen.extend(str(le.subnet) for le in changes.added)

    client = EtcdClient([auth_etcd.url], username="late", password="late-pw", timeout=2)
    watch = PeerWatch(
        EtcdSubnetManager(client, "/late/network"),
        LeaseTable(IPv4Network("10.1.0.0/16")),
        on_changes,
    )
    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(1.5)
        assert not task.done()  # refused, but still running
        assert "permission denied" in caplog.text and not watch.connected
        auth_etcd.ctl("role", "grant-permission", "late", "--prefix=true", "read", "/late/network/")
        async with asyncio.timeout(15):
            while "10.1.2.0/24" not in seen:
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await client.close()


def _status_cluster(*flags):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pyflannel", "status", "--cluster", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_flags_reach_etcd_over_tls(tls_etcd, certs):
    proc = _status_cluster(
        f"--etcd-endpoints={tls_etcd.url}",
        f"--etcd-cafile={certs.ca}",
        f"--etcd-certfile={certs.client_cert}",
        f"--etcd-keyfile={certs.client_key}",
    )
    assert proc.returncode == 0, proc.stderr
    assert " leases\n" in proc.stdout and "paths between nodes" in proc.stdout


def test_the_cli_with_the_wrong_ca_says_so_and_fails(tls_etcd, certs, tmp_path):
    other = make_certs(tmp_path, name="wrongca")
    proc = _status_cluster(
        f"--etcd-endpoints={tls_etcd.url}",
        f"--etcd-cafile={other.ca}",
        f"--etcd-certfile={certs.client_cert}",
        f"--etcd-keyfile={certs.client_key}",
    )
    assert proc.returncode == 1
    assert "TLS failed: check --etcd-cafile" in proc.stderr and "Traceback" not in proc.stderr


def test_the_cli_flags_carry_username_and_password(auth_etcd):
    ok = _status_cluster(
        f"--etcd-endpoints={auth_etcd.url}", "--etcd-username=flannel", "--etcd-password=flannel-pw"
    )
    assert ok.returncode == 0, ok.stderr
    bad = _status_cluster(
        f"--etcd-endpoints={auth_etcd.url}", "--etcd-username=flannel", "--etcd-password=nope"
    )
    assert bad.returncode == 1 and "authentication failed" in bad.stderr


def test_an_etcd_that_never_gets_healthy_leaves_no_process(certs):
    # A TLS server checked without its certificates never answers "healthy".
    server = EtcdServer(certs=certs)
    server.ctl = lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "unhealthy")
    try:
        with pytest.raises(RuntimeError, match="not healthy"):
            server.start(timeout=1)
        assert server.proc is not None and server.proc.poll() is not None  # ended, not leaked
    finally:
        server.stop()


async def test_with_auth_many_concurrent_calls_through_a_restart_fail_only_while_etcd_is_down(
    auth_etcd,
):
    """Connecting and authenticating are one step: no call sees a channel without a token
    (UNAUTHENTICATED), and no call fails for a reason other than etcd being down."""
    import asyncio

    client = EtcdClient([auth_etcd.url], username="flannel", password="flannel-pw", timeout=2)
    other: list[str] = []
    done = 0

    async def caller(i: int) -> None:
        nonlocal done
        for n in range(40):
            try:
                await client.put(f"/coreos.com/network/c{i}".encode(), str(n).encode())
                await client.get(f"/coreos.com/network/c{i}".encode())
                done += 1
            except EtcdUnavailable:
                await asyncio.sleep(0.05)
            except Exception as e:  # what must never happen: any other failure
                other.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(caller(i)) for i in range(30)]
    await asyncio.sleep(0.3)
    await asyncio.to_thread(auth_etcd.restart)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(auth_etcd.restart)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    assert [r for r in results if r is not None] == []  # no task ended by an exception
    assert other == []
    assert done > 0
