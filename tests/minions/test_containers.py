"""A container runtime on a minion: podman through the flannel CNI plugin the package ships,
set up as the README tells an operator. Its --restart=always container comes back at boot
only after pyflannel is ready (pyflannel.service orders itself before podman-restart.service),
with an address of the node's subnet, reachable from another minion's pod."""

import sys

import pytest

from testbed import netns

from .conftest import minion_bed, wait_until_it_knows_the_vtep_of

# The [network] part as the README says for Debian 12's podman (CNI instead of netavark). The
# rest because a minion is itself a container on this host: its cgroups are not its own to
# delegate, and nspawn's seccomp filter refuses new kernel keyrings to its services.
CONTAINERS_CONF = """\
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "/etc/cni/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
[containers]
cgroups = "disabled"
keyring = false
"""
ROOTFS = "/srv/busybox"
APPLETS = ("sh", "ping", "ip", "sleep", "httpd", "cat")


@pytest.fixture(scope="module")
def bed(installed_layers):
    # No bed pod on the first minion: its containers are the pods there (on cni0, from the
    # CNI plugin's own address range).
    bed = minion_bed(installed_layers, hosts=2, pods=1)
    yield bed
    bed.close()


def set_up_podman(node) -> None:
    m = node.minion
    m.write("/etc/containers/containers.conf", CONTAINERS_CONF)
    out = m.exec(
        "pyflannel", "install-cni", "--bin-dir", "/usr/lib/cni", "--conf-dir", "/etc/cni/net.d"
    ).stdout
    assert "/etc/cni/net.d/10-flannel.conflist" in out  # written, or kept from before
    links = " ".join(f"ln -sf busybox {ROOTFS}/bin/{a};" for a in APPLETS)
    m.sh(
        f"mkdir -p {ROOTFS}/bin {ROOTFS}/proc {ROOTFS}/sys {ROOTFS}/dev {ROOTFS}/etc {ROOTFS}/tmp "
        f"{ROOTFS}/www && cp /bin/busybox {ROOTFS}/bin/ && {links} "
        f"echo hello from a minion > {ROOTFS}/www/index.html"
    )


def container_address(node, name: str) -> str:
    out = node.minion.exec("podman", "exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    return out.split()[3].split("/")[0]


def test_install_cni_writes_the_plugin_the_package_ships_unchanged(bed):
    node = bed.nodes[0]
    set_up_podman(node)
    verify = node.minion.exec("dpkg", "--verify", "pyflannel", check=False).stdout
    # Only the configured conffile differs from what the package installed.
    assert verify.splitlines() == ["??5?????? c /etc/default/pyflannel"], verify


def test_a_restart_always_container_comes_back_after_pyflannel_is_ready_at_boot(bed):
    a, b = bed.nodes
    set_up_podman(a)
    a.minion.exec(
        "podman",
        "run",
        "-d",
        "--name",
        "web",
        "--restart=always",
        "--stop-timeout=1",  # busybox httpd as PID 1 ignores SIGTERM
        "--network",
        "cbr0",
        "--rootfs",
        ROOTFS,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
        timeout=120,
    )
    a.systemctl("enable", "podman-restart.service")  # podman: --restart=always across boots
    subnet = a.subnet
    address = container_address(a, "web")
    assert address in [str(h) for h in subnet.hosts()]
    assert b.ping(address, count=2, interval=0.2).lost == 0
    assert fetch(b, address) == "hello from a minion"
    a.reboot()
    pyflannel = a.service("ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
    restart = a.minion.unit(
        "podman-restart.service", "ActiveState", "Result", "ExecMainStartTimestampMonotonic"
    )
    assert restart["ActiveState"] == "active" and restart["Result"] == "success", restart
    assert 0 < int(pyflannel) <= int(restart["ExecMainStartTimestampMonotonic"])
    assert a.subnet == subnet
    address = container_address(a, "web")
    assert address in [str(h) for h in subnet.hosts()]
    # a's VXLAN device is new, with a new VTEP MAC (random, as upstream's): b reprograms a
    # from a's rewritten lease, which a being ready does not wait for
    wait_until_it_knows_the_vtep_of(b, a, timeout=20)
    assert b.ping(address, count=3, interval=0.2).lost == 0
    assert fetch(b, address) == "hello from a minion"


def fetch(client, address: str) -> str:
    """A page of the container's web server, from the client's pod."""
    code = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://{address}/', timeout=5).read().decode())"
    )
    return netns.run([sys.executable, "-c", code], ns=client.pod_ns).stdout.strip()
