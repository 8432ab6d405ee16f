"""pyflannel's own route-netlink socket (kernel/iproute.py) against the kernel, in a namespace
of its own: what it creates is what ``ip`` shows, what it reads is what ``ip`` set, the
kernel's refusals arrive as errors, and the notification socket sees a device go."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from testbed import netns
from tests.conftest import require_root

NS = f"pf{os.getpid()}iproute"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_in(ns: str, code: str) -> subprocess.CompletedProcess:
    """``code`` run by this interpreter inside namespace ``ns``, from the checkout."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    from pyflannel.kernel.iproute import IPRoute, NetlinkError, Notifications, RTMGRP_LINK
    from pyflannel.backend.vxlan.device import VxlanSpec
    from pyflannel.backend.vxlan.devices import create_vxlan
    from pyflannel.backend.kernel import configure_device
    from ipaddress import IPv4Address, IPv4Network
    out = {}
    with IPRoute() as ipr:
        watch = Notifications(RTMGRP_LINK)
        lo = ipr.link_lookup(ifname="lo")[0]
        spec = VxlanSpec("flannel.1", 1, IPv4Address("198.51.100.1"), lo, 8472, False, True, 1450)
        link = create_vxlan(ipr, spec, "02:11:22:33:44:55")
        vx = link.vxlan
        out["found"] = [link.index, link.kind, link.mac, link.mtu, vx.vni, str(vx.local),
                        vx.underlay, vx.port, vx.learning, vx.gbp]
        out["changed"] = configure_device(
            ipr, link.index, "flannel.1", IPv4Address("10.5.3.0"), IPv4Network("10.5.0.0/16"), 1400
        )
        out["again"] = configure_device(
            ipr, link.index, "flannel.1", IPv4Address("10.5.3.0"), IPv4Network("10.5.0.0/16"), 1400
        )
        try:
            create_vxlan(ipr, spec, "02:11:22:33:44:56")
        except NetlinkError as e:
            out["exists"] = [e.code, e.args[1]]
        out["missing"] = ipr.link_lookup(ifname="nosuchdev")
        try:
            ipr.route("get", dst="192.0.2.1")
        except NetlinkError as e:
            out["unreachable"] = e.code
        out["names"] = sorted(m.get_attr("IFLA_IFNAME") for m in ipr.get_links())
        ipr.delete_link(link.index)
        out["events"] = [(m["event"], m.get_attr("IFLA_IFNAME")) for m in watch.get()]
        watch.close()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def ns():
    require_root()
    netns.create(NS)
    yield NS
    netns.delete(NS)


def test_devices_and_addresses_as_ip_shows_them(ns):
    run = run_in(ns, SCRIPT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    _, kind, mac, mtu, vni, local, link_index, port, learning, gbp = out["found"]
    assert (kind, mac, mtu, vni, local) == ("vxlan", "02:11:22:33:44:55", 1450, 1, "198.51.100.1")
    assert (link_index, port, learning, gbp) == (1, 8472, False, True)
    assert out["changed"] == ["address 10.5.3.0/32", "MTU 1400", "up"]
    assert out["again"] == []  # read back as set: nothing to change
    assert out["exists"][0] == 17  # EEXIST, with the kernel's words or the errno's
    assert out["exists"][1]
    assert out["missing"] == []
    assert out["unreachable"] == 101  # ENETUNREACH: the namespace has no routes
    assert out["names"] == ["flannel.1", "lo"]
    assert ["RTM_DELLINK", "flannel.1"] in out["events"]


def test_what_ip_shows_of_a_device_we_created(ns):
    # The device of the test above is gone; make one and let `ip` judge it.
    code = textwrap.dedent(
        """
        from ipaddress import ip_address
        from pyflannel.kernel.iproute import IPRoute, Vxlan
        with IPRoute() as ipr:
            vxlan = Vxlan(9, ip_address("198.51.100.9"), port=4789)
            ipr.add_link("flannel.9", "vxlan", mac="02:00:00:00:00:09", mtu=1430, vxlan=vxlan)
            index = ipr.get_link("flannel.9").index
            ipr.addr("replace", index=index, address="10.9.0.0", prefixlen=32)
            ipr.set_link(index, up=True, txqlen=2000)
        """
    )
    made = run_in(ns, code)
    assert made.returncode == 0, made.stderr
    (link,) = netns.ip_json(ns, "-d", "link", "show", "flannel.9")
    data = link["linkinfo"]["info_data"]
    assert (link["mtu"], link["address"], link["txqlen"]) == (1430, "02:00:00:00:00:09", 2000)
    assert (data["id"], data["local"], data["port"], data["learning"]) == (
        9,
        "198.51.100.9",
        4789,
        False,
    )
    assert "UP" in link["flags"]
    (addr,) = netns.ip_json(ns, "-4", "addr", "show", "flannel.9")
    assert [(a["local"], a["prefixlen"]) for a in addr["addr_info"]] == [("10.9.0.0", 32)]


def test_a_burst_of_notifications_is_read_in_batches(ns):
    """200 routes added at once: the kernel watch's socket hands them over at most BATCH
    datagrams per read (the event loop gets a turn between reads), and none is lost."""
    code = textwrap.dedent(
        """
        import json, subprocess
        from pyflannel.kernel.iproute import Notifications, RTMGRP_IPV4_ROUTE
        watch = Notifications(RTMGRP_IPV4_ROUTE)
        batch = "".join(f"route add 10.77.{i}.0/24 dev lo proto 152\\n" for i in range(200))
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        reads = []
        while True:
            got = [str(m.get_attr("RTA_DST")) for m in watch.get() if m["event"] == "RTM_NEWROUTE"]
            if not got:
                break
            reads.append(got)
        print(json.dumps({"batch": watch.BATCH, "reads": reads}))
        """
    )
    run = run_in(ns, code)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    seen = [dst for read in out["reads"] for dst in read]
    assert sorted(seen) == sorted(f"10.77.{i}.0" for i in range(200))
    assert len(out["reads"]) >= 200 // out["batch"]
    assert max(len(read) for read in out["reads"]) <= out["batch"]


def test_a_dump_interrupted_by_changes_is_read_again_and_whole(ns):
    """3,000 addresses that stay, one added and deleted every 10 ms meanwhile: the kernel
    marks some dumps interrupted (NLM_F_DUMP_INTR: it numbers the address table's changes;
    its IPv4 route dumps carry no such mark); each is read again, and every dump returned
    holds all 3,000 (an interrupted dump taken as it was may miss some)."""
    code = textwrap.dedent(
        """
        import json, socket, subprocess, time
        from pyflannel.kernel.iproute import IPRoute
        static = {f"10.{100 + i // 250}.{i % 250}.1" for i in range(3000)}
        batch = "".join(f"address add {a}/32 dev lo\\n" for a in static)
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        churn = subprocess.Popen(["sh", "-c", "while :; do ip address add 10.99.0.1/32 dev lo; "
                                  "sleep 0.01; ip address del 10.99.0.1/32 dev lo; sleep 0.01; "
                                  "done"])
        whole, dumps, deadline = True, 0, time.monotonic() + 20
        with IPRoute() as ipr:
            try:
                while ipr.sock.dumps_interrupted < 3 and time.monotonic() < deadline:
                    seen = {str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(socket.AF_INET)}
                    whole &= static <= seen
                    dumps += 1
            finally:
                churn.kill()
                churn.wait()
            interrupted = ipr.sock.dumps_interrupted
        print(json.dumps({"interrupted": interrupted, "dumps": dumps, "whole": whole}))
        """
    )
    run = run_in(ns, code)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["interrupted"] >= 3, out  # the kernel did interrupt dumps, and we saw it
    assert out["whole"], out
