"""etcd over TLS with client certificates, and with username/password, and with users taken
from the client certificate's CN: the happy paths, and an error that says what is wrong for
every TLS misconfiguration (never a silent plaintext fallback).

The server certificates are made for server authentication only, as etcd's own TLS guide
(cfssl's "server" profile) and upstream flannel's test certificates make them: etcd's JSON
gateway cannot work with them under --client-cert-auth (it dials etcd with the server
certificate as a client certificate); gRPC, which pyflannel speaks, does."""

import asyncio
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.etcd.client import EtcdClient, EtcdError, EtcdUnavailable, TLSFiles
from testbed.certs import make_certs, upstream_certs
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
def upstream_tls_etcd():
    """etcd with upstream flannel's own test certificates (dist/test of flannel v0.20.2)."""
    require_etcd()
    with EtcdServer(certs=upstream_certs()) as server:
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


@pytest.fixture(scope="module")
def cn_etcd(tmp_path_factory):
    """TLS with auth on: the user is the client certificate's CN ("node-7"), no password;
    its role may read and write the network's prefix only."""
    require_etcd()
    require(shutil.which("openssl") is not None, "the openssl command")
    cn_certs = make_certs(tmp_path_factory.mktemp("cn-certs"), client_cn="node-7")
    with EtcdServer(certs=cn_certs) as server:
        server.enable_auth("s3cret")
        server.ctl("user", "add", "node-7", "--no-password")
        server.ctl("role", "add", "flannel-node")
        server.ctl(
            "role",
            "grant-permission",
            "flannel-node",
            "--prefix=true",
            "readwrite",
            "/coreos.com/network/",
        )
        server.ctl("user", "grant-role", "node-7", "flannel-node")
        yield server, cn_certs


def tls_of(certs) -> TLSFiles:
    return TLSFiles(str(certs.ca), str(certs.client_cert), str(certs.client_key))


async def _watch_sees_a_put(client: EtcdClient, key: bytes) -> None:
    """A watch on the key's parent sees a put made after it began."""
    _, revision = await client.get(key)
    parent = key.rsplit(b"/", 1)[0] + b"/"
    stream = client.watch_prefix(parent, revision + 1).__aiter__()
    try:
        assert (await stream.__anext__()).created
        await client.put(key, b"watched")
        async with asyncio.timeout(5):
            while True:
                response = await stream.__anext__()
                if any(ev.kv.key == key for ev in response.events):
                    return
    finally:
        await stream.aclose()


async def test_tls_with_client_certificate(tls_etcd, certs):
    assert tls_etcd.url.startswith("https://")
    client = EtcdClient([tls_etcd.url], tls=tls_of(certs))
    await client.put(b"/tls/k", b"v")
    kv, _ = await client.get(b"/tls/k")
    assert kv.value == b"v"
    await _watch_sees_a_put(client, b"/tls/w")
    await client.close()


async def test_upstream_flannels_own_test_certificates(upstream_tls_etcd):
    """The deployment of upstream's functional suite: --client-cert-auth and a server
    certificate for server authentication only. Reads, writes, leases, renewals, watch."""
    client = EtcdClient([upstream_tls_etcd.url], tls=tls_of(upstream_certs()))
    lease_id, ttl = await client.grant(60)
    await client.put(b"/coreos.com/network/subnets/10.1.5.0-24", b"{}", lease=lease_id)
    assert await client.keepalive(lease_id) == ttl
    kvs, _ = await client.get_prefix(b"/coreos.com/network/subnets/")
    assert [kv.lease for kv in kvs] == [lease_id]
    await _watch_sees_a_put(client, b"/coreos.com/network/subnets/10.1.6.0-24")
    members = await client.members()  # status and doctor read each member's /metrics too
    assert members[0]["reachable"] and "metrics_error" not in members[0], members
    await client.close()


async def _refusal(url: str, tls: TLSFiles) -> str:
    client = EtcdClient([url], timeout=3, tls=tls)
    try:
        with pytest.raises(EtcdUnavailable) as e:
            await client.get(b"/tls/k")
    finally:
        await client.close()
    assert str(e.value).startswith(f"etcd at {url}: "), e.value
    return str(e.value)


async def test_a_ca_that_did_not_sign_etcds_certificate_is_named(tls_etcd, certs, tmp_path):
    other = make_certs(tmp_path, name="otherca")
    tls = TLSFiles(str(other.ca), str(certs.client_cert), str(certs.client_key))
    said = await _refusal(tls_etcd.url, tls)
    assert f"etcd's certificate is not signed by a CA in --etcd-cafile ({other.ca})" in said


async def test_no_client_certificate_against_client_cert_auth_is_named(tls_etcd, certs):
    said = await _refusal(tls_etcd.url, TLSFiles(str(certs.ca)))
    assert "etcd requires a client certificate (its --client-cert-auth)" in said
    assert "--etcd-certfile and --etcd-keyfile" in said


async def test_a_client_certificate_without_client_usage_is_named(upstream_tls_etcd):
    """The server certificate given as the client's: made for serverAuth only."""
    up = upstream_certs()
    said = await _refusal(
        upstream_tls_etcd.url, TLSFiles(str(up.ca), str(up.server_cert), str(up.server_key))
    )
    assert f"etcd refused our client certificate {up.server_cert}" in said
    assert "server authentication (serverAuth), without client authentication (clientAuth)" in said


async def test_a_client_certificate_of_another_ca_is_refused_and_said(tls_etcd, certs, tmp_path):
    other = make_certs(tmp_path, name="otherca")
    tls = TLSFiles(str(certs.ca), str(other.client_cert), str(other.client_key))
    said = await _refusal(tls_etcd.url, tls)
    assert f"etcd refused our client certificate {other.client_cert}" in said
    assert "not by a CA in --etcd-cafile" in said


@pytest.mark.parametrize(
    "files, said",
    [
        (
            lambda c: TLSFiles("/nonexistent/ca.pem", str(c.client_cert), str(c.client_key)),
            "--etcd-cafile /nonexistent/ca.pem: no such file",
        ),
        (
            lambda c: TLSFiles(str(c.ca), str(c.client_cert), str(c.server_key)),
            "is not the key of --etcd-certfile",
        ),
        (lambda c: TLSFiles(str(c.ca), str(c.client_cert), str(c.client_cert)), "--etcd-keyfile"),
    ],
    ids=["missing CA file", "key of another certificate", "no key in the key file"],
)
async def test_unusable_tls_files_are_named(tls_etcd, certs, files, said):
    assert said in await _refusal(tls_etcd.url, files(certs))


async def test_a_name_etcds_certificate_does_not_hold_is_named(tls_etcd, certs):
    url = tls_etcd.url.replace("127.0.0.1", "localhost")
    said = await _refusal(url, tls_of(certs))
    assert "etcd's certificate does not name localhost (its subjectAltName)" in said


async def test_plaintext_against_a_tls_server_fails_instead_of_downgrading(tls_etcd):
    said = await _refusal(tls_etcd.url.replace("https://", "http://"), TLSFiles())
    assert "does it serve TLS there? (then use https://)" in said


async def test_tls_against_a_plaintext_server_says_so(auth_etcd, certs):
    said = await _refusal(auth_etcd.url.replace("http://", "https://"), tls_of(certs))
    assert "does it speak TLS? (if etcd serves plaintext there, use http://)" in said


async def test_the_user_from_the_client_certificates_cn(cn_etcd):
    """No password: etcd takes the user from the certificate's CN. Leases, renewals and the
    watch work within the role's prefix; a write outside it is refused, and said."""
    from pyflannel.control.peer_watch import PeerWatch
    from pyflannel.etcd.store import EtcdSubnetManager
    from pyflannel.subnet.lease import LeaseAttrs
    from pyflannel.subnet.table import LeaseTable

    server, cn_certs = cn_etcd
    server.put("/coreos.com/network/config", '{"Network": "10.1.0.0/16"}')
    client = EtcdClient([server.url], tls=tls_of(cn_certs), timeout=3)
    store = EtcdSubnetManager(client)
    seen: list[str] = []

    async def on_changes(changes):
        seen.extend(str(le.subnet) for le in changes.added)

    watch = PeerWatch(store, LeaseTable(IPv4Network("10.1.0.0/16")), on_changes)
    task = asyncio.create_task(watch.run())
    try:
        assert await store.network_config() == b'{"Network": "10.1.0.0/16"}'
        attrs = LeaseAttrs(
            IPv4Address("198.51.100.7"), backend_type="vxlan", backend_data={"VNI": 1}
        )
        lease = await store.create_lease(IPv4Network("10.1.7.0/24"), attrs, ttl=60)
        assert lease is not None and await store.renew_lease(lease) == 60
        async with asyncio.timeout(10):
            while "10.1.7.0/24" not in seen:
                await asyncio.sleep(0.05)
        with pytest.raises(EtcdError, match=f"etcd at {server.url}: etcdserver: permission denied"):
            await client.put(b"/elsewhere/key", b"x")
    finally:
        task.cancel()
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
    said = f"etcd's certificate is not signed by a CA in --etcd-cafile ({other.ca})"
    assert said in proc.stderr and "Traceback" not in proc.stderr


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
