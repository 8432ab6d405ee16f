"""Sites (--site): the article's cluster, small. Site "de": two nodes with public addresses on
the switch (the internet) and a private LAN between them; site "oslo": a node behind its
office's NAT router (testbed/nat.py: masquerading, no port forwarded). A VXLAN network.
Within "de" the pods' traffic is VXLAN over the private LAN, in clear, never on the public
segment; between the sites it is WireGuard (the site link, flannel-site) over the public
addresses, with no pod address in clear there, in both directions, although nothing reaches
the office node unless it spoke first. Through userspace WireGuard (no kernel module here)."""

import base64
import json
import socket
import subprocess

import pytest

from testbed.capture import finish_capture, start_capture
from testbed.nat import outside_ip
from tests.conftest import require

from .conftest import eventually, require_testbed

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
ARGS = ("--reconcile-interval=2",)
SITE_PORT = 51830


@pytest.fixture(scope="module")
def bed():
    from testbed.nat import SitesBed

    require_testbed()
    for tool in ("wireguard-go", "wg", "nsenter", "unshare", "iptables"):
        require(
            subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0,
            f"{tool} (apt install wireguard-go wireguard-tools util-linux iptables)",
        )
    with SitesBed(hosts=4, sites={"de": {1, 2}, "oslo": {3}, "home": {4}}, natted={3, 4}) as bed:
        bed.put_config(CONFIG)
        for node in bed.nodes:
            node.start(*ARGS, *bed.site_args(node), private_run=True)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


def records(bed) -> dict[str, dict]:
    out = bed.etcd.ctl("get", "/coreos.com/network/pyflannel/nodes/", "--prefix").stdout
    lines = out.splitlines()
    return {k: json.loads(v) for k, v in zip(lines[0::2], lines[1::2], strict=False)}


def test_each_node_publishes_its_site_beside_an_upstream_lease(bed):
    de1, _, oslo, _ = bed.nodes
    stored = eventually(lambda: _all_records(bed), timeout=10)
    mine = stored[f"/coreos.com/network/pyflannel/nodes/{de1.subnet.network_address}-24"]
    assert mine["site"] == "de" and mine["inside_ip"] == "10.0.0.1"
    assert mine["outside_ip"] == "198.51.100.1" and mine["site_port"] == SITE_PORT
    assert len(base64.b64decode(mine["site_key"])) == 32
    theirs = stored[f"/coreos.com/network/pyflannel/nodes/{oslo.subnet.network_address}-24"]
    assert theirs["site"] == "oslo" and theirs["inside_ip"] == "192.168.3.2"
    lease = json.loads(bed.leases()[f"/coreos.com/network/subnets/{de1.subnet.network_address}-24"])
    assert lease["PublicIP"] == "198.51.100.1"
    assert set(lease) == {"PublicIP", "PublicIPv6", "BackendType", "BackendData"}


def _all_records(bed):
    stored = records(bed)
    assert len(stored) == 4, stored
    return stored


def test_every_pod_reaches_every_other_both_ways(bed):
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=15)
                result = a.ping(b.pod_ip, count=5, interval=0.1)
                assert result.lost == 0, (a.ns, b.ns, result)


def test_within_a_site_vxlan_goes_over_its_private_lan_in_clear(bed):
    de1, de2, *_ = bed.nodes
    (fdb,) = [e for e in de1.fdb() if e.get("dst") and e["dst"].startswith("10.0.0.")]
    assert fdb["dst"] == "10.0.0.2"
    lan = start_capture(de1.ns, "eth1", 3)
    public = start_capture(de1.ns, "eth0", 3)
    de1.ping(de2.pod_ip, count=10, interval=0.1)
    on_lan, on_public = finish_capture(lan), finish_capture(public)
    vxlan = [r for r in on_lan if r["dport"] == 8472 and r.get("inner_dst") == str(de2.pod_ip)]
    assert len(vxlan) >= 10, on_lan
    assert not [r for r in on_public if r["dport"] == 8472 or r["sport"] == 8472], on_public


def test_across_sites_only_wireguard_on_the_public_segment(bed):
    de1, _, oslo, _ = bed.nodes
    _reaches(oslo, de1)
    capture = start_capture(de1.ns, "eth0", 3)
    de1.ping(oslo.pod_ip, count=10, interval=0.1)
    oslo.ping(de1.pod_ip, count=10, interval=0.1)
    seen = finish_capture(capture)
    pair = [r for r in seen if {r["src"], r["dst"]} == {"198.51.100.1", str(outside_ip(3))}]
    assert len(pair) >= 40, seen  # 10 echoes and 10 replies each way
    assert all(SITE_PORT in (r["sport"], r["dport"]) for r in pair), pair
    assert not [r for r in seen if 8472 in (r["dport"], r["sport"])], seen
    pods = [socket.inet_aton(str(node.pod_ip)).hex() for node in (de1, oslo)]
    for r in seen:  # (and the keepalives of the other site links): WireGuard's messages
        payload = r["payload_hex"]
        assert int(payload[:2], 16) in (1, 2, 3, 4) and payload[2:8] == "000000", payload[:16]
        assert not any(ip in payload for ip in pods), "a pod address in clear on the wire"


def test_status_says_where_each_peer_is_and_how_it_is_reached(bed):
    de1, de2, oslo, _ = bed.nodes
    _reaches(oslo, de1)

    def rows():
        by_subnet = {r["subnet"]: r for r in de1.status()["peers"]}
        assert by_subnet[str(oslo.subnet)].get("endpoint"), by_subnet
        return by_subnet

    by_subnet = eventually(rows, timeout=10)
    mate, office = by_subnet[str(de2.subnet)], by_subnet[str(oslo.subnet)]
    assert mate["site"] == "de" and mate["encap"] == "vxlan" and mate["public_ip"] == "10.0.0.2"
    assert office["site"] == "oslo" and office["encap"] == "site"
    # sent where its packets come from: its router's outside, which it now publishes too
    assert office["endpoint"]["endpoint"].startswith(f"{outside_ip(3)}:")
    assert office["endpoint"]["published"] == office["endpoint"]["endpoint"]
    text = de1.status_cli().stdout
    assert "site de, at its inside address 10.0.0.2" in text, text
    assert f"site oslo (this node: de), encrypted to {outside_ip(3)}:" in text, text


def test_behind_nat_a_node_learns_its_outside_address_from_the_public_ones(bed):
    de1, de2, oslo, _ = bed.nodes
    key = f"/coreos.com/network/pyflannel/nodes/{oslo.subnet.network_address}-24"

    def learned():
        stored = records(bed)
        mine = stored[key]
        assert mine.get("outside_learned") and mine["outside_ip"] == str(outside_ip(3)), mine
        return stored

    stored = eventually(learned, timeout=20)
    # what it learned it from: the public nodes' view of its site link's packets
    for public in (de1, de2):
        theirs = stored[f"/coreos.com/network/pyflannel/nodes/{public.subnet.network_address}-24"]
        seen = theirs["seen"][str(oslo.subnet)]
        assert seen == f"{outside_ip(3)}:{stored[key]['outside_port']}", theirs
        assert "outside_learned" not in theirs


def test_two_nodes_behind_two_nats_reach_each_other_directly(bed):
    """Each sends to the other's outside address as the public nodes see it: each one's
    packets open its own router for the other's (no relay, no port forwarded)."""
    *_, oslo, home = bed.nodes

    def direct():
        row = {r["subnet"]: r for r in oslo.status()["peers"]}[str(home.subnet)]
        endpoint = row.get("endpoint") or {}
        assert endpoint.get("endpoint", "").startswith(f"{outside_ip(4)}:"), row
        assert endpoint["last_handshake"] > 0, row
        return row

    eventually(direct, timeout=30)
    for a, b in ((oslo, home), (home, oslo)):
        result = a.ping(b.pod_ip, count=5, interval=0.1)
        assert result.lost == 0, result


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1
