"""etcd over TLS with client certificates, and with username/password: the happy paths, and
clear errors (never a silent plaintext fallback) for a wrong CA, a missing client
certificate, plaintext against a TLS server, and a wrong password."""

import shutil

import pytest

from pyflannel.errors import EtcdUnavailable
from pyflannel.etcd.client import EtcdClient, EtcdError, TLSFiles
from pyflannel.testbed.certs import make_certs
from pyflannel.testbed.etcd import EtcdServer
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
