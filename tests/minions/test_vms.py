"""The package on Debian's own kernels, in QEMU guests (testbed/vm.py; issue 39, first step):
a Debian 12 guest with Debian 12's kernel, the .deb installed with apt, pyflannel.service
started by its systemd at boot; a node on this machine's kernel beside it on the bed's switch.
One VXLAN cluster of mixed kernels: the guest leases a subnet from the bed's etcd, and a pod on
the host-kernel node reaches the guest's VXLAN device. Run with ``-s`` to see each guest's
``uname -r`` and boot time."""

import shutil
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from testbed import rootfs
from testbed.vm import Guest, kernel_layer
from tests.conftest import require

from ..e2e.conftest import eventually

pytestmark = pytest.mark.vms
GUEST_ADDRESS, BARE_ADDRESS = "198.51.100.50", "198.51.100.51"


@pytest.fixture(scope="module")
def guest_layers(deb, minion_layers, tmp_path_factory):
    """The minion tree with Debian 12's kernel and, above both, the package (apt, offline)."""
    require(shutil.which("qemu-system-x86_64") is not None, "QEMU (apt install qemu-system-x86)")
    kernel = kernel_layer(minion_layers)
    upper = Path(tmp_path_factory.mktemp("vm-session")) / "layer"
    yield rootfs.with_package([kernel, *minion_layers], deb, upper)
    rootfs.remove_tree(upper)


@pytest.fixture(scope="module")
def bed(guest_layers):
    from testbed.bed import TestBed

    with TestBed(hosts=1) as bed:
        bed.put_config()
        (node,) = bed.nodes
        node.start("--reconcile-interval=2", "--probe-interval=1")
        node.wait_ready()
        node.add_pod()
        default = {
            "/etc/default/pyflannel": f"FLANNELD_ETCD_ENDPOINTS={bed.etcd.url}\nFLANNELD_IFACE=eth0\n"
        }
        (vxlan,) = guest_layers[1].glob("usr/lib/modules/*/kernel/drivers/net/vxlan/vxlan.ko")
        bed.guest = Guest("g1", guest_layers, bed.lan, GUEST_ADDRESS, bed.workdir, default)
        bed.bare = Guest(  # as on an OpenVZ/LXC host that never loads the module
            "g2",
            guest_layers,
            bed.lan,
            BARE_ADDRESS,
            bed.workdir,
            default,
            without=[f"/{vxlan.relative_to(guest_layers[1])}"],
        )
        try:
            for guest, what in ((bed.guest, ""), (bed.bare, ", no vxlan module in this guest")):
                guest.build()
                seconds = guest.boot()
                print(
                    f"\nguest {guest.name}: Debian 12, kernel {guest.kernel}{what}, booted in "
                    f"{seconds:.1f} s (TCG)"
                )
            yield bed
        finally:
            bed.guest.close()
            bed.bare.close()


def test_the_guest_runs_debian_12s_own_kernel_and_leases_a_subnet(bed):
    guest = bed.guest
    assert guest.kernel.startswith("6.1.") and guest.kernel.endswith("-amd64"), guest.kernel
    subnet = IPv4Network(guest.wait_console(r"GUEST subnet=(\S+)", 150).group(1), strict=False)
    key = f"/coreos.com/network/subnets/{subnet.network_address}-{subnet.prefixlen}"
    lease = bed.leases().get(key)
    assert lease is not None and f'"PublicIP":"{GUEST_ADDRESS}"' in lease, (
        bed.leases(),
        guest.console_tail(),
    )


def test_a_pod_on_the_host_kernel_reaches_the_guests_vxlan_device(bed):
    guest = bed.guest
    subnet = IPv4Network(guest.wait_console(r"GUEST subnet=(\S+)", 150).group(1), strict=False)
    reached(bed, subnet, guest)


def test_a_kernel_without_vxlan_falls_back_to_udp_by_itself_and_is_reached(bed):
    """No vxlan module in this guest (the reference article's OpenVZ VPS): pyflannel falls
    back to UDP, says why, leases with BackendType udp; the host-kernel node keeps VXLAN for
    its VXLAN peers and reaches this one through its own flannel0."""
    bare = bed.bare
    print("\nno vxlan module in this guest:", bare.kernel)
    subnet = IPv4Network(bare.wait_console(r"GUEST subnet=(\S+)", 150).group(1), strict=False)
    said = bare.wait_console(r"GUEST log: .*VXLAN FALLBACK.*", 10).group(0)
    assert "udp" in said.lower(), said
    lease = bed.leases()[f"/coreos.com/network/subnets/{subnet.network_address}-{subnet.prefixlen}"]
    assert '"BackendType":"udp"' in lease and '"FallbackFrom":"vxlan"' in lease, lease
    reached(bed, subnet, bare)


def reached(bed, subnet: IPv4Network, guest) -> None:
    """The pod on the host-kernel node reaches the guest's overlay device (its subnet's
    first address), within two minutes (the guest's slow start under TCG)."""
    (node,) = bed.nodes

    def reaches():
        result = node.ping(subnet.network_address, count=1, wait=2)
        assert result.received == 1, (result, guest.console_tail(20))
        return True

    eventually(reaches, timeout=120)
