"""Every backend under systemd on minions, as the package runs it: only CAP_NET_ADMIN and
CAP_NET_RAW (the unit's bounding set), the UDP backend's TUN through /dev/net/tun, nftables
mode's tables; all pairs of minions reach each other. (VXLAN with iptables: test_service.py.)"""

import re

import pytest

from .conftest import minion_bed

NET_ADMIN_AND_RAW = 1 << 12 | 1 << 13
BACKENDS = {
    "udp": ({"Type": "udp"}, {}, {"UDP_WORKERS": "1"}),
    "host-gw": ({"Type": "host-gw"}, {}, {}),
    "vxlan+nftables": ({"Type": "vxlan"}, {"EnableNFTables": True}, {"IP_MASQ": "true"}),
}


@pytest.fixture(scope="module", params=list(BACKENDS))
def bed(request, installed_layers):
    backend, extra, variables = BACKENDS[request.param]
    config = {"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": backend, **extra}
    bed = minion_bed(installed_layers, hosts=3, config=config, **variables)
    bed.backend = request.param
    yield bed
    bed.close()


def test_every_pair_of_minions_reaches_each_other(bed):
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                assert a.ping(b.pod_ip, count=2, interval=0.2).lost == 0, (bed.backend, a.ns, b.ns)


def capabilities(node, pid: int) -> dict[str, int]:
    status = node.minion.exec("cat", f"/proc/{pid}/status").stdout
    return {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}


def test_the_daemon_and_its_workers_hold_only_net_admin_and_net_raw(bed):
    node = bed.nodes[0]
    pids = [node.main_pid]
    children = node.minion.exec("ps", "-o", "pid=", "--ppid", str(node.main_pid), check=False)
    pids += [int(p) for p in children.stdout.split()]
    if bed.backend == "udp":
        assert len(pids) == 2, "the UDP data-path worker runs"
    for pid in pids:
        caps = capabilities(node, pid)
        assert caps["CapEff"] == caps["CapBnd"] == NET_ADMIN_AND_RAW, (pid, caps)


def test_the_backends_kernel_objects_are_in_place(bed):
    node = bed.nodes[0]
    if bed.backend == "udp":
        assert node.ip_json("link", "show", "flannel0")[0]["mtu"] == 1472
    elif bed.backend == "host-gw":
        gateways = {r.get("gateway") for r in node.routes()}
        assert gateways == {str(n.underlay_ip) for n in bed.nodes[1:]}
    else:
        tables = node.minion.exec("nft", "list", "tables").stdout
        assert "ip flannel" in tables, tables
        assert "FLANNEL" not in node.minion.exec("iptables-save").stdout
