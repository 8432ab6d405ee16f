"""The package on Debian's own kernels, in QEMU guests (testbed/vm.py): Debian 12 (kernel 6.1,
Python 3.11) and Debian 13 (kernel 6.12, Python 3.13), each with the .deb installed with apt
and pyflannel.service started by its systemd at boot, beside a node on this machine's kernel
(6.18) on the bed's switch: one cluster of mixed kernels. A third guest, Debian 12 without the
vxlan module (an OpenVZ/LXC-like kernel), falls back to UDP by itself. Commands run inside the
guests through Debian's QEMU guest agent. Run with ``-s`` to see each guest's ``uname -r``,
boot time and what ``doctor`` says there."""

import json
import shutil
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from testbed import netns, rootfs
from testbed.vm import RELEASES, Guest, guest_layers
from tests.conftest import require

from ..e2e.conftest import eventually
from ..e2e.test_path_mtu import SOURCE  # 1 MB blocks to a port 5001 sink, argv: address, MB

pytestmark = pytest.mark.vms
# name -> (Debian release, address on the switch, without the vxlan module)
GUESTS = {
    "d12": ("12", "198.51.100.50", False),
    "d13": ("13", "198.51.100.52", False),
    "bare": ("12", "198.51.100.51", True),
}
HOSTGW = (
    "/net-hostgw",
    {"Network": "10.7.0.0/16", "Backend": {"Type": "host-gw"}, "EnableNFTables": True},
)


@pytest.fixture(scope="module")
def trees(deb, tmp_path_factory):
    """Per Debian release: its stock tree and kernel, and above them the package (apt,
    offline)."""
    require(shutil.which("qemu-system-x86_64") is not None, "QEMU (apt install qemu-system-x86)")
    dependencies = rootfs.package_dependencies(deb)
    uppers, trees = [], {}
    for release in sorted({release for release, _, _ in GUESTS.values()}):
        upper = Path(tmp_path_factory.mktemp(f"vm-debian{release}")) / "layer"
        trees[release] = rootfs.with_package(guest_layers(release, dependencies), deb, upper)
        uppers.append(upper)
    yield trees
    for upper in uppers:
        rootfs.remove_tree(upper)


@pytest.fixture(scope="module")
def bed(trees):
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
        bed.guests = {}
        try:
            for name, (release, address, bare) in GUESTS.items():
                without = []
                if bare:  # as on an OpenVZ/LXC host that never loads the module
                    kernel = trees[release][1]
                    (ko,) = kernel.glob("usr/lib/modules/*/kernel/drivers/net/vxlan/vxlan.ko*")
                    without.append(f"/{ko.relative_to(kernel)}")
                guest = Guest(
                    name, trees[release], bed.lan, address, bed.workdir, default, without=without
                )
                bed.guests[name] = guest
                guest.build()
            for guest in bed.guests.values():  # booting at once: TCG uses a core each
                guest.start()
            for name, guest in bed.guests.items():
                seconds = guest.wait_booted()
                what = ", no vxlan module in this guest" if GUESTS[name][2] else ""
                print(
                    f"\nguest {name}: Debian {GUESTS[name][0]}, kernel {guest.kernel}{what}, "
                    f"booted in {seconds:.1f} s (TCG, three guests at once)"
                )
            yield bed
        finally:
            for guest in bed.guests.values():
                guest.close()


def subnet_of(guest: Guest, since: int = 0) -> IPv4Network:
    found = guest.wait_console(r"GUEST subnet=(\S+)", 150, since=since).group(1)
    return IPv4Network(found, strict=False)


def lease_of(bed, subnet: IPv4Network) -> dict:
    key = f"/coreos.com/network/subnets/{subnet.network_address}-{subnet.prefixlen}"
    return json.loads(bed.leases()[key])


def test_each_guest_runs_its_releases_own_kernel_python_and_unit(bed):
    for name, guest in bed.guests.items():
        release = GUESTS[name][0]
        _, series, python = RELEASES[release]
        assert guest.kernel.startswith(series) and guest.kernel.endswith("-amd64"), guest.kernel
        assert f"Python {python}." in guest.run("python3 --version").check().stdout
        assert guest.run("systemctl is-active pyflannel").check().stdout.strip() == "active"
        lease = lease_of(bed, subnet_of(guest))
        assert lease["PublicIP"] == GUESTS[name][1], lease
        theirs = [
            k for k, v in bed.leases().items() if json.loads(v)["PublicIP"] == lease["PublicIP"]
        ]
        assert len(theirs) == 1, (theirs, guest.run("journalctl -u pyflannel -o cat").stdout)


def test_a_pod_on_the_host_kernel_reaches_every_guest(bed):
    for guest in bed.guests.values():
        reached(bed, subnet_of(guest), guest)


def test_the_guests_reach_each_other_and_the_host_node(bed):
    """VXLAN between the two kernels that have it (6.1 and 6.12, and the host's 6.18): their
    routes go through flannel.1; to the guest without VXLAN, through each one's flannel0."""
    (node,) = bed.nodes
    subnets = {name: subnet_of(guest) for name, guest in bed.guests.items()}
    subnets["host"] = node.subnet
    for name, guest in bed.guests.items():
        for peer, subnet in subnets.items():
            if peer == name:
                continue
            target = subnet.network_address
            other = bed.guests.get(peer)
            eventually(lambda g=guest, t=target, o=other: _pings(g, t, o), timeout=60)
            via = guest.run(f"ip route get {target}").check().stdout
            both_vxlan = "bare" not in (name, peer)
            assert ("dev flannel.1" if both_vxlan else "dev flannel0") in via, (name, peer, via)


def test_a_kernel_without_vxlan_falls_back_to_udp_and_says_why_everywhere(bed):
    """No vxlan module in this guest (the reference article's OpenVZ VPS): pyflannel falls
    back to UDP, says why in its log, its status and doctor, leases with BackendType udp."""
    bare = bed.guests["bare"]
    print("\nno vxlan module in this guest:", bare.kernel)
    subnet = subnet_of(bare)
    said = bare.wait_console(r"GUEST log: .*VXLAN FALLBACK.*", 10).group(0)
    assert "udp" in said.lower(), said
    lease = lease_of(bed, subnet)
    assert lease["BackendType"] == "udp", lease
    assert lease["BackendData"]["FallbackFrom"] == "vxlan", lease
    print(f"its lease says why: {lease['BackendData']['Reason']}")
    status = bare.run("pyflannel status").stdout
    assert "fallback" in status.lower() and "vxlan" in status.lower(), status
    vxlan = finding(doctor(bare), "vxlan")
    assert vxlan["status"] == "warn", vxlan
    assert f"this kernel ({bare.kernel}) cannot create a VXLAN device" in vxlan["detail"], vxlan
    assert "falls back to UDP" in vxlan["advice"], vxlan


def test_the_udp_fast_path_on_debian_12s_kernel(bed):
    """What the fast path asks of 6.1 (TUN offloads, UDP_SEGMENT, UDP_GRO): the running data
    path and doctor agree on it, and 8 MB of TCP from the host node's pod arrive whole."""
    bare = bed.guests["bare"]
    # (exit 2, degraded: the fallback)
    fast = json.loads(bare.run("pyflannel status --json").stdout)["backend"]["udp"]["fastpath"]
    said = finding(doctor(bare), "udp fast path")
    print(f"\n{bare.kernel}: status fast path {fast}; doctor: {said['detail']}")
    assert f"({bare.kernel})" in said["detail"], said
    if said["status"] == "pass":
        assert fast["tx"] and fast["rx"] and fast["tso"] and not fast["off"], fast
    else:
        assert fast["off"], fast  # each refusal is said where the path turned it off
    (node,) = bed.nodes
    subnet = subnet_of(bare)
    bare.run(f"ip addr add {subnet.network_address + 2}/32 dev lo").check()
    bare.run(
        f"systemd-run --unit=bed-sink python3 -c '{SINK}' {subnet.network_address + 2}"
    ).check()
    eventually(lambda: "LISTEN" in bare.run("ss -ltn sport = :5001").stdout, timeout=30)
    netns.run(
        ["python3", "-c", SOURCE, str(subnet.network_address + 2), "8"], ns=node.pod_ns, timeout=120
    )
    received = eventually(lambda: _sunk(bare), timeout=60)
    assert received == 8 << 20, received


def test_doctor_on_each_kernel_says_what_is_true_there(bed):
    """Each guest's doctor names its kernel in what kernels differ in, and what it says holds
    there: VXLAN where the lease says vxlan, its own kernel (not a container)."""
    for name, guest in bed.guests.items():
        found = doctor(guest)
        print(f"\ndoctor on {guest.kernel} (Debian {GUESTS[name][0]}):")
        for f in found:
            print(f"  {f['status']:<4} {f['check']}: {f['detail']}")
        vxlan = finding(found, "vxlan")
        assert f"({guest.kernel})" in vxlan["detail"], vxlan
        backend = lease_of(bed, subnet_of(guest))["BackendType"]
        assert (vxlan["status"] == "pass") == (backend == "vxlan"), (vxlan, backend)
        assert finding(found, "container")["detail"] == "not a container (own kernel)"
        assert finding(found, "tun")["status"] == "pass"


def test_a_reboot_keeps_the_subnet_and_the_peers_routes(bed):
    """Debian 13's guest rebooted (a new kernel: no device, route or rule of the old one):
    the same subnet, routes to every peer again, and reached again."""
    guest = bed.guests["d13"]
    subnet = subnet_of(guest)
    before = float(guest.run("cut -d' ' -f1 /proc/uptime").check().stdout)
    since = guest.reboot()
    after = float(guest.run("cut -d' ' -f1 /proc/uptime").check().stdout)
    assert after < before, (before, after)
    assert subnet_of(guest, since) == subnet
    (node,) = bed.nodes
    peers = [node.subnet, *(subnet_of(g) for n, g in bed.guests.items() if n != "d13")]
    for peer in peers:
        eventually(lambda p=peer: str(p) in guest.run(f"ip route show {p}").stdout, timeout=60)
    reached(bed, subnet, guest)


def test_host_gw_and_nftables_between_guests_and_the_host_node(bed):
    """A second network, host-gw with its rules in nftables: a second daemon in each VXLAN
    guest (systemd-run) and on the host node. Each guest's routes go to the others' switch
    addresses, its nftables table is there, and a pod on the host node reaches both."""
    prefix, config = HOSTGW
    bed.put_config(config, prefix=prefix)
    (second,) = bed.second_network("g")
    second.start("--reconcile-interval=2", f"--etcd-prefix={prefix}")
    second.wait_ready()
    second.add_pod()
    hostgw = {}
    for name in ("d12", "d13"):
        guest = bed.guests[name]
        guest.run(
            f"systemd-run --unit=pyflannel-hostgw -p Type=notify /usr/bin/pyflannel run "
            f"--etcd-endpoints={bed.etcd.url} --etcd-prefix={prefix} --iface=eth0 "
            f"--subnet-file=/run/flannel/hostgw.env",
            timeout=120,
        ).check()
        env = guest.run(". /run/flannel/hostgw.env && echo $FLANNEL_SUBNET").check().stdout
        hostgw[name] = IPv4Network(env.strip(), strict=False)
        # the address a pod would have, on a bridge as the CNI plugin makes it
        guest.run(
            f"ip link add cni-hg type bridge && ip addr add {hostgw[name].network_address + 1}/24 "
            "dev cni-hg && ip link set cni-hg up"
        ).check()
        tables = guest.run("nft list tables").check().stdout
        assert "flannel-ipv4" in tables, tables
    for name, peer in (("d12", "d13"), ("d13", "d12")):
        route = bed.guests[name].run(f"ip route show {hostgw[peer]}").check().stdout
        assert f"via {GUESTS[peer][1]} dev eth0" in route, route
        target = hostgw[peer].network_address + 1
        eventually(lambda g=bed.guests[name], t=target: _pings(g, t), timeout=60)
    for name in ("d12", "d13"):
        target = hostgw[name].network_address + 1
        eventually(lambda t=target: second.ping(t, count=1, wait=2).received == 1, timeout=60)


def _sunk(guest: Guest) -> int:
    ran = guest.run("cat /run/bed-sink")
    assert ran.returncode == 0, "the sink has not written its count yet"
    return int(ran.stdout)


def doctor(guest: Guest) -> list[dict]:
    ran = guest.run("pyflannel doctor --json", timeout=120)
    return json.loads(ran.stdout)


def finding(found: list[dict], check: str) -> dict:
    return next(f for f in found if f["check"] == check)


def _pings(guest: Guest, target, peer: Guest | None = None) -> bool:
    ran = guest.run(f"ping -c 1 -W 2 {target}")
    assert ran.returncode == 0, (
        f"{guest.name} does not reach {target}: {ran.stdout}\n{overlay_state(guest)}"
        + (f"\n{overlay_state(peer)}" if peer else "")
    )
    return True


def overlay_state(guest: Guest) -> str:
    """What a guest's kernel holds for the overlay, for failure messages."""
    ran = guest.run(
        "uname -r; ip -d link show flannel.1; ip addr show flannel.1; ip route; "
        "ip neigh show dev flannel.1; bridge fdb show dev flannel.1; iptables -S; "
        "journalctl -u pyflannel --no-pager -n 15 -o cat"
    )
    return f"---- {guest.name}:\n{ran.stdout}{ran.stderr}"


def reached(bed, subnet: IPv4Network, guest) -> None:
    """The pod on the host-kernel node reaches the guest's overlay device (its subnet's
    first address), within two minutes (the guest's slow start under TCG)."""
    (node,) = bed.nodes

    def reaches():
        result = node.ping(subnet.network_address, count=1, wait=2)
        assert result.received == 1, (result, guest.console_tail(20))
        return True

    eventually(reaches, timeout=120)


SINK = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 5001)); s.listen(1); "
    "c, _ = s.accept(); n = 0\n"
    "while (b := c.recv(65536)): n += len(b)\n"
    'open("/run/bed-sink", "w").write(str(n))'
)
