"""The package's life on a running node, through apt inside booted minions: an upgrade restarts
the running daemon without losing a ping; removal stops it and leaves the kernel state (the
pods keep reaching each other); purge removes its configuration."""

import time

import pytest

from pyflannel import __version__
from testbed.package import newer_package

from .conftest import minion_bed

SERVICE = "pyflannel.service"


@pytest.fixture(scope="module")
def newer_deb(deb, tmp_path_factory):
    return newer_package(deb, f"{__version__}+upgrade1", tmp_path_factory.mktemp("newer"))


@pytest.fixture(scope="module")
def bed(installed_layers):
    bed = minion_bed(installed_layers, hosts=3)
    yield bed
    bed.close()


def apt(node, *args: str, deb=None):
    if deb is not None:
        node.minion.write(f"/root/{deb.name}", "")
        node.minion.path(f"/root/{deb.name}").write_bytes(deb.read_bytes())
        args = tuple(a.replace("DEB", f"/root/{deb.name}") for a in args)
    return node.minion.exec(
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", *args, timeout=300
    )


def test_an_upgrade_restarts_the_running_daemon_without_losing_a_ping(bed, newer_deb):
    a, b = bed.nodes[0], bed.nodes[1]
    subnet, pid = a.subnet, a.main_pid
    there = b.start_ping(a.pod_ip, interval=0.02)
    back = a.start_ping(b.pod_ip, interval=0.02)
    try:
        time.sleep(0.3)
        apt(a, "install", "DEB", deb=newer_deb)
        time.sleep(0.3)
    finally:
        results = [a.finish_ping(p, interrupt=True) for p in (there, back)]
    assert a.minion.exec("pyflannel", "--version").stdout.strip() == f"{__version__}+upgrade1"
    assert a.main_pid != pid and a.service("ActiveState")["ActiveState"] == "active"
    assert f"pyflannel {__version__}+upgrade1 starting" in a.log()
    assert a.subnet == subnet
    for result in results:
        assert result.sent > 20 and result.lost == 0, result.output[-400:]


def test_remove_stops_it_and_leaves_the_kernel_state_then_purge_removes_its_config(bed):
    a, b = bed.nodes[2], bed.nodes[0]
    routes = sorted(r["dst"] for r in a.routes())
    apt(a, "remove", "pyflannel")
    assert a.service("LoadState", "ActiveState") == {
        "LoadState": "not-found",
        "ActiveState": "inactive",
    }
    assert a.minion.exec("pgrep", "-f", "pyflannel run", check=False).returncode == 1
    assert sorted(r["dst"] for r in a.routes()) == routes and a.neighbours() and a.fdb()
    assert a.ping(b.pod_ip, count=3, interval=0.2).lost == 0
    assert b.ping(a.pod_ip, count=3, interval=0.2).lost == 0
    assert a.minion.path("/etc/default/pyflannel").exists()  # removal keeps the conffile
    apt(a, "purge", "pyflannel")
    assert not a.minion.path("/etc/default/pyflannel").exists()
    assert not a.minion.path(
        "/etc/systemd/system/multi-user.target.wants/pyflannel.service"
    ).exists()
    status = a.minion.exec("dpkg-query", "-W", "-f=${db:Status-Status}", "pyflannel", check=False)
    assert status.stdout in ("", "not-installed")
