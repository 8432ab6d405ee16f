"""A backend defined in the tests (tests/e2e/custom_backend/), registered by one entry in
``PYFLANNEL_BACKENDS``, runs end to end on real daemons: leases with its type, its routes in
the kernel (owned and repaired like any backend's), every pod pair reaching each other,
status and metrics showing it, all with no edit to pyflannel itself."""

import json

import pytest

from .conftest import FAST_RECONCILE, eventually, started_bed

CONFIG = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "route-only"}}
ENV = {"PYFLANNEL_BACKENDS": "route-only=tests.e2e.custom_backend.backend"}


@pytest.fixture(scope="module")
def bed():
    bed = started_bed(
        hosts=3, config=CONFIG, daemon_args=(*FAST_RECONCILE, "--probe-interval=1"), env=ENV
    )
    yield bed
    bed.close()


def test_its_leases_carry_its_type(bed):
    for key, value in bed.leases().items():
        assert json.loads(value)["BackendType"] == "route-only", key


def test_every_pod_pair_reaches_each_other_over_its_routes(bed):
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=10)
    a = bed.nodes[0]
    routes = {r["dst"]: r.get("gateway") for r in a.routes()}
    assert routes == {str(n.subnet): str(n.underlay_ip) for n in bed.nodes[1:]}


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


def test_a_deleted_route_is_repaired_as_any_backends(bed):
    a, b = bed.nodes[0], bed.nodes[1]
    a.run("ip", "route", "del", str(b.subnet))
    eventually(lambda: _has_route(a, b), timeout=10)


def _has_route(a, b):
    assert str(b.subnet) in {r["dst"] for r in a.routes()}


def test_status_and_metrics_show_it_healthy(bed):
    a = bed.nodes[0]
    eventually(lambda: _healthy(a), timeout=15)
    doc = a.status()
    assert doc["backend"]["type"] == "route-only"
    assert doc["backend"]["routes_via"] == "eth0"
    assert {row["encap"] for row in doc["peers"]} == {"route"}
    assert all(row["route"] and row["neighbour"] is None for row in doc["peers"])
    assert 'pyflannel_peers{encap="route"} 2.0' in a.endpoint("/metrics")


def _healthy(node):
    proc = node.status_cli()
    assert proc.returncode == 0, proc.stdout
