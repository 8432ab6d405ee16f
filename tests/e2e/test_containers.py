"""Real containers on the overlay: podman (CNI backend) with pyflannel's flannel plugin and
Debian's bridge, host-local and portmap, on three nodes of the bed (two VXLAN nodes and one
that runs UDP: --backend-fallback=udp)."""

import sys

import pytest

from testbed import podman
from tests.conftest import require

from .conftest import FAST_RECONCILE, eventually, require_testbed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from testbed.bed import TestBed

    require_testbed()
    missing = podman.available()
    require(
        not missing, f"{missing} (apt install podman containernetworking-plugins busybox-static)"
    )
    rootfs = podman.make_rootfs(tmp_path_factory.mktemp("rootfs"))
    with TestBed(hosts=3) as bed:
        bed.put_config()
        for node in bed.nodes:
            extra = ("--backend-fallback=udp",) if node.index == 3 else ()
            node.start(*FAST_RECONCILE, *extra)
        for node in bed.nodes:
            node.wait_ready()
        shells = [podman.PodmanShell(node, rootfs) for node in bed.nodes]
        try:
            addresses = [shell.run(f"c{i + 1}") for i, shell in enumerate(shells)]
            yield bed, shells, addresses
        finally:
            for shell in shells:
                shell.close()


def test_containers_get_addresses_from_their_nodes_subnet_and_its_mtu(cluster):
    bed, shells, addresses = cluster
    for node, shell, address in zip(bed.nodes, shells, addresses, strict=True):
        assert (
            address in str(node.subnet)
            or address.rsplit(".", 1)[0] == str(node.subnet.network_address).rsplit(".", 1)[0]
        )
        code, mtu = shell.exec(f"c{node.index}", "cat /sys/class/net/eth0/mtu")
        assert code == 0 and int(mtu) == node.mtu  # 1450 on VXLAN nodes, 1472 on the UDP one
    assert bed.nodes[2].mtu == 1472 and bed.nodes[0].mtu == 1450


@pytest.mark.parametrize("src, dst", [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2)])
def test_containers_reach_each_other_across_vxlan_and_udp_nodes(cluster, src, dst):
    _, shells, addresses = cluster
    code, out = shells[src].exec(f"c{src + 1}", f"ping -c 2 -W 2 {addresses[dst]}")
    assert code == 0, out


def test_a_published_port_is_reachable_from_another_node(cluster):
    bed, shells, _ = cluster
    web = shells[1]
    web.run("web", "-p 8080:80", command="httpd -f -p 80 -h /www")
    try:
        target = f"http://{bed.nodes[1].underlay_ip}:8080/"
        out = eventually(lambda: _fetch(bed.nodes[0], target), timeout=15)
        assert out.strip() == "hello from a pod"
    finally:
        web.remove("web")


def _fetch(node, url):
    """From another node's host, as a client outside the cluster would come."""
    code = (
        f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=2).read().decode())"
    )
    proc = node.run(sys.executable, "-c", code, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_removing_a_container_releases_its_address(cluster):
    _, shells, _ = cluster
    shell = shells[0]
    before = shell.leased_addresses()
    address = shell.run("short")
    assert address in shell.leased_addresses()
    code, out = shell.remove("short")
    assert code == 0, out
    assert shell.leased_addresses() == before
    assert not (shell.base / "flannel" / "short").exists()
    assert not [
        p
        for p in (shell.base / "flannel").iterdir()
        if len(p.name) == 64 and p.name not in _ids(shell)
    ]


def _ids(shell):
    _, out = shell.podman("ps -q --no-trunc")
    return set(out.split())
