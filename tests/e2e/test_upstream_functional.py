"""Upstream flannel's own functional suite (dist/functional-test.sh of v0.20.2), ported to the
namespace bed, with upstream's own test certificates (dist/test/*.pem): etcd at 172.17.0.1
with TLS and --client-cert-auth, its server certificate made for server authentication only.

Upstream's cases: vxlan, udp and host-gw pings between two nodes, both ways; and two networks
on each host (``test_multi``: a vxlan network and a host-gw network, each daemon with its own
--etcd-prefix and subnet file), where traffic forced onto the wrong interface must fail. Here
an upstream flanneld v0.20.2 node is in the same etcd: two pyflannel nodes and one upstream
node per backend, and in the two-network case pyflannel on one host and upstream on the other.
(Upstream's script gives etcd an http:// listener, where etcd ignores its TLS files; the port
serves https://, which is what the certificates are for.) ipip, ipsec and wireguard need
kernel modules this machine lacks.
"""

from ipaddress import ip_network

import pytest

from testbed.certs import upstream_certs
from testbed.upstream import start_upstream

from .conftest import FAST_RECONCILE, eventually, require_upstream

ETCD_IP = "172.17.0.1"  # docker0's address in upstream's script, named by its server certificate
FLANNEL_NET = "10.10.0.0/16"
DAEMON_ARGS = (*FAST_RECONCILE, "--udp-workers=1")


def _bed(hosts: int):
    from testbed.bed import TestBed

    require_upstream()
    return TestBed(hosts=hosts, etcd_certs=upstream_certs(), etcd_ip=ETCD_IP)


@pytest.fixture(scope="module", params=["vxlan", "udp", "host-gw"])
def bed(request):
    with _bed(3) as bed:
        assert bed.etcd.url == f"https://{ETCD_IP}:2379"
        bed.put_config({"Network": FLANNEL_NET, "Backend": {"Type": request.param}})
        for node in bed.nodes[:2]:
            node.start(*DAEMON_ARGS, "-v", "10")  # as upstream's suite starts flanneld
        for node in bed.nodes[:2]:
            node.wait_ready()
        start_upstream(bed.nodes[2], "-v", "10")
        for node in bed.nodes:
            node.add_pod()
        yield bed


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


@pytest.mark.parametrize("src, dst", [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)])
def test_ping(bed, src, dst):
    """upstream's test_<backend>_ping: pod to pod, both ways (and to and from upstream)."""
    a, b = bed.nodes[src], bed.nodes[dst]
    eventually(lambda: _reaches(a, b), timeout=20)
    assert a.ping(b.pod_ip, count=3, interval=0.2).lost == 0


def test_pyflannel_read_the_config_over_tls_and_named_no_etcd_trouble(bed):
    for node in bed.nodes[:2]:
        assert node.subnet in ip_network(FLANNEL_NET).subnets(8)
        log = node.log()
        assert "etcd unreachable" not in log and "incompatible key usage" not in log, log[-2000:]


MULTI = {
    "": ("/vxlan/network", {"Network": "10.11.0.0/16", "Backend": {"Type": "vxlan"}}),
    "g": ("/hostgw/network", {"Network": "10.12.0.0/16", "Backend": {"Type": "host-gw"}}),
}


@pytest.fixture(scope="module")
def multi():
    """upstream's test_multi: two networks on each host; pyflannel on h1, upstream on h2."""
    with _bed(2) as bed:
        networks = {"": bed.nodes, "g": bed.second_network("g")}
        for prefix, config in MULTI.values():
            bed.put_config(config, prefix=prefix)
        for tag, (prefix, _) in MULTI.items():
            networks[tag][0].start(*DAEMON_ARGS, f"--etcd-prefix={prefix}")
            networks[tag][0].wait_ready()
        for tag, (prefix, _) in MULTI.items():
            start_upstream(networks[tag][1], f"-etcd-prefix={prefix}")
        for nodes in networks.values():
            for node in nodes:
                node.add_pod()
        bed.networks = networks
        yield bed


def test_multi_each_network_reaches_across_both_ways(multi):
    for nodes in multi.networks.values():
        for a, b in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            eventually(lambda a=a, b=b: _reaches(a, b), timeout=20)


def test_multi_the_upstream_host_reaches_each_network_as_upstream_asserts(multi):
    vxlan, hostgw = multi.networks[""][0], multi.networks["g"][0]
    upstream_host = multi.nodes[1]
    for dest in (hostgw.pod_ip, vxlan.pod_ip):
        eventually(lambda d=dest: _host_pings(upstream_host, d), timeout=20)
    # "If a particular (wrong) interface is forced then pings should fail"
    assert _host_ping(upstream_host, hostgw.pod_ip, "flannel.1").returncode != 0
    assert _host_ping(upstream_host, vxlan.pod_ip, "eth0").returncode != 0


def _host_ping(node, dest, interface: str | None = None):
    forced = ["-I", interface] if interface else []
    return node.run("ping", "-n", "-W", "1", "-c", "1", *forced, str(dest), check=False)


def _host_pings(node, dest):
    assert _host_ping(node, dest).returncode == 0
