"""Booted Debian minions with the package installed (testbed/minion_bed.py): the .deb built once
per test session by scripts/build-deb, exactly as an operator's build would; the rootfs layers
cached on this machine (a fresh machine builds them: ~1.5 min, needing the Debian archive)."""

import shutil
import time
from pathlib import Path

import pytest

from testbed import rootfs
from testbed.minion_bed import MinionBed
from testbed.package import build_deb
from tests.conftest import require, require_etcd, require_root


def require_minions() -> None:
    require_root()
    require_etcd()
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("dpkg-buildpackage", "dpkg-dev"),
        ("dh", "debhelper"),
        ("dh_python3", "dh-python"),
        ("lintian", "lintian"),
    ):
        require(shutil.which(tool) is not None, f"{tool} (apt install {package})")
    require(Path("/dev/net/tun").exists(), "/dev/net/tun (the tun module)")


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    require_minions()
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def minion_layers(deb) -> list[Path]:
    """The cached minion tree (pyflannel's Debian dependencies and the test tools)."""
    return rootfs.minion(rootfs.package_dependencies(deb))


@pytest.fixture(scope="session")
def installed_layers(deb, minion_layers, tmp_path_factory):
    """Minion layers with the package installed by `apt-get install ./pyflannel_*.deb`."""
    upper = Path(tmp_path_factory.mktemp("session")) / "layer"
    layers = rootfs.with_package(minion_layers, deb, upper)
    yield layers
    rootfs.remove_tree(upper)


def minion_bed(
    layers, hosts: int = 3, config=None, boot: bool = True, pods: int | None = None, **configure
) -> MinionBed:
    """A bed of booted minions, pyflannel started at boot with ``configure`` in
    /etc/default/pyflannel (FLANNELD_ names without the prefix), a pod on each of the last
    ``pods`` nodes (default all); the caller closes it."""
    bed = MinionBed(hosts=hosts, layers=layers)
    bed.__enter__()
    try:
        bed.put_config(config)
        for node in bed.nodes:
            node.minion.mount()
            node.configure(**configure)
        if boot:
            bed.boot(configure=False)
            for node in bed.nodes:
                node.wait_ready()
            for node in bed.nodes[hosts - (hosts if pods is None else pods) :]:
                node.add_pod()
    except BaseException:
        report(bed)
        bed.close()
        raise
    return bed


def report(bed: MinionBed) -> None:
    """The minions' journals into the test output (a failed test shows them)."""
    try:
        print(bed.journals())
    except Exception as e:
        print(f"(no journals: {e})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, the journals of every bed the test used are part of its report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in item.fixturenames:
            bed = item.funcargs.get(name)
            if isinstance(bed, MinionBed):
                rep.sections.append((f"minion journals ({name})", bed.journals()[-20000:]))


def wait_until_it_knows_the_vtep_of(node, peer, timeout: float) -> None:
    """After ``peer`` rebooted, its VXLAN device is new, with a new VTEP MAC (random, as
    upstream's): ``node`` reprograms it from the peer's rewritten lease, which the peer
    being ready does not wait for."""
    mac = peer.ip_json("link", "show", "flannel.1")[0]["address"]
    gateway = str(peer.subnet.network_address)
    deadline = time.monotonic() + timeout
    while not any(n["dst"] == gateway and n.get("lladdr") == mac for n in node.neighbours()):
        assert time.monotonic() < deadline, (mac, node.neighbours())
        time.sleep(0.1)
