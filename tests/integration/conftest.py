"""One real etcd server on a loopback port for the whole integration run; each test gets its
own key prefix so tests cannot see each other's leases."""

import itertools

import pytest

from pyflannel.etcd.client import EtcdClient
from pyflannel.etcd.store import EtcdSubnetManager
from pyflannel.subnet.config import parse_network_config
from testbed.etcd import EtcdServer
from tests.conftest import require_etcd

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd_server():
    require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture
async def client(etcd_server):
    c = EtcdClient([etcd_server.url], timeout=3)
    yield c
    await c.close()


@pytest.fixture
def prefix(request):
    return f"/test{next(_prefixes)}-{request.node.name[:40]}/network"


@pytest.fixture
async def store(client, prefix):
    store = EtcdSubnetManager(client, prefix)
    yield store
    if store._watch is not None:  # a test's watch stream, ended in its own loop
        await store._watch.close()


def network(text: str = '{"Network": "10.1.0.0/16", "SubnetLen": 24}'):
    return parse_network_config(text)
