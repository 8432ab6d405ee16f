"""Sites (--site): the article's cluster, small. Site "de": two nodes with public addresses on
the switch (the internet) and a private LAN between them; site "oslo": a node behind its
office's NAT router (testbed/nat.py: masquerading, no port forwarded). A VXLAN network.
Within "de" the pods' traffic is VXLAN over the private LAN, in clear, never on the public
segment; between the sites it is WireGuard (the site link, flannel-site) over the public
addresses, with no pod address in clear there, in both directions, although nothing reaches
the office node unless it spoke first. Through userspace WireGuard (no kernel module here)."""

import base64
import itertools
import json
import re
import socket
import struct
import subprocess
import time
from ipaddress import IPv4Address

import pytest

from testbed.capture import finish_capture, start_capture
from testbed.iperf import iperf, received_bits_per_second
from testbed.nat import outside_ip

from .conftest import eventually, require_upstream, require_wireguard_go

CONFIG = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
ARGS = ("--reconcile-interval=2", "--probe-interval=2")
SITE_PORT = 51830


@pytest.fixture(scope="module")
def bed():
    from testbed.nat import SitesBed

    require_wireguard_go(nat=True)
    with SitesBed(
        hosts=6,
        sites={"de": {1, 2, 6}, "oslo": {3, 5}, "home": {4}},
        natted={3, 4, 5},
        symmetric=frozenset({4}),  # home: no direct path to oslo through it, until opened
        behind={5: 3},  # the second office node, behind the office's router
    ) as bed:
        bed.put_config(CONFIG)
        # the fifth, a second office node, joins later; the sixth runs upstream flanneld
        bed.started = bed.nodes[:4]
        for node in bed.started:
            node.start(*ARGS, *bed.site_args(node), private_run=True)
        for node in bed.started:
            node.wait_ready()
            node.add_pod()
        yield bed


def records(bed) -> dict[str, dict]:
    out = bed.etcd.ctl("get", "/coreos.com/network/pyflannel/nodes/", "--prefix").stdout
    lines = out.splitlines()
    return {k: json.loads(v) for k, v in zip(lines[0::2], lines[1::2], strict=False)}


def test_each_node_publishes_its_site_beside_an_upstream_lease(bed):
    de1, _, oslo, _ = bed.started
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
    for a in bed.started:
        for b in bed.started:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=15)
                result = a.ping(b.pod_ip, count=5, interval=0.1)
                assert result.lost == 0, (a.ns, b.ns, result)


def test_tcp_transfers_within_a_site_and_across_sites(bed):
    de1, de2, oslo, *_ = bed.started
    for a, b in ((de1, de2), (de1, oslo), (oslo, de2)):
        result = iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds=1)
        assert received_bits_per_second(result) > 1e6, (a.ns, b.ns, result)


def test_within_a_site_vxlan_goes_over_its_private_lan_in_clear(bed):
    de1, de2, *_ = bed.started
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
    de1, _, oslo, _ = bed.started
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
    de1, de2, oslo, *_ = bed.started
    _reaches(oslo, de1)

    def rows():
        by_subnet = {r["subnet"]: r for r in de1.status()["peers"]}
        assert by_subnet[str(oslo.subnet)].get("endpoint"), by_subnet
        return by_subnet

    by_subnet = eventually(rows, timeout=10)
    mate, office = by_subnet[str(de2.subnet)], by_subnet[str(oslo.subnet)]
    assert mate["site"] == "de" and mate["encap"] == "vxlan" and mate["public_ip"] == "10.0.0.2"
    assert office["site"] == "oslo" and office["encap"] == "site"
    assert mate["placement"]["path"] == "in site" and not mate["placement"]["encrypted"]
    assert office["placement"]["path"] == "across sites" and office["placement"]["encrypted"]
    # sent where its packets come from: its router's outside, which it now publishes too
    assert office["endpoint"]["endpoint"].startswith(f"{outside_ip(3)}:")
    assert office["endpoint"]["published"] == office["endpoint"]["endpoint"]
    text = de1.status_cli().stdout
    assert "MTU 1420 = 1500 (eth1 MTU) - 80 (the site link's WireGuard overhead)" in text, text
    assert de1.subnet_env()["FLANNEL_MTU"] == "1420"  # the pods' packets fit the site link
    assert "site de, at its inside address 10.0.0.2" in text, text
    assert f"site oslo (this node: de), encrypted to {outside_ip(3)}:" in text, text


def test_behind_nat_a_node_learns_its_outside_address_from_the_public_ones(bed):
    de1, de2, oslo, *_ = bed.started
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


def test_doctor_on_a_natted_node_names_its_learned_outside_address(bed):
    _, _, oslo, _ = bed.started
    _, findings = oslo.doctor()
    site = findings["site"]
    assert site["status"] in ("pass", "warn"), site  # warn: home may be relayed by now
    assert f"site oslo, outside {outside_ip(3)}:" in site["detail"], site
    assert "(learned: behind NAT)" in site["detail"], site
    text = oslo.status_cli().stdout
    assert f"site       oslo, outside {outside_ip(3)}:" in text, text


def test_two_nodes_no_nat_lets_meet_go_through_a_relay_both_ways(bed):
    """Home's router maps each flow to a random port: what the public nodes see of home is
    no use to oslo, and neither opens its router for the other. After RELAY_AFTER (15 s)
    without a session each sends the other's subnet through the same public node."""
    *_, oslo, home = bed.started
    relayed = {}

    def through_a_relay():
        for a, b in ((oslo, home), (home, oslo)):
            row = {r["subnet"]: r for r in a.status()["peers"]}[str(b.subnet)]
            assert row["placement"]["path"] == "relayed", row
            assert row["placement"]["encrypted"] is True
            relayed[a.index] = row["placement"]["via"]
        return relayed

    eventually(through_a_relay, timeout=60)
    assert relayed[3] == relayed[4]  # both ends agree (they publish their choice)
    (relay,) = [n for n in bed.started if str(n.subnet) == relayed[3]]
    assert bed.site_of(relay) == "de"
    for a, b in ((oslo, home), (home, oslo)):
        result = a.ping(b.pod_ip, count=10, interval=0.1)
        assert result.lost == 0, result
        transfer = iperf(a.pod_ns, b.pod_ns, str(b.pod_ip), seconds=1)  # TCP through the relay
        assert received_bits_per_second(transfer) > 1e6, transfer
    pair = " <-> ".join(sorted((str(oslo.subnet), str(home.subnet))))
    assert relay.status()["backend"]["relaying_for"] == [pair]
    assert f"relays for {pair}" in relay.status_cli().stdout
    metrics = oslo.endpoint("/metrics")
    line = (
        f'pyflannel_peer_path{{encrypted="true",path="relayed",peer="{home.subnet}",'
        f'site="home",via="{relay.subnet}"}} 1.0'
    )
    assert line in metrics, metrics
    assert "pyflannel_relayed_pairs 1.0" in relay.endpoint("/metrics")
    # trace follows the relayed path: this node's session with the relay, the relay's path on
    trace = oslo.trace_cli(str(oslo.pod_ip), str(home.pod_ip), "--json")
    assert trace.stdout, trace.stderr
    steps = {s["place"]: s for s in json.loads(trace.stdout)["steps"]}
    assert steps["site"]["detail"].startswith("site home"), steps
    assert steps["route"]["ok"] and "the site link" in steps["route"]["detail"], steps
    assert steps["relay hop 1"]["ok"] and str(relay.subnet) in steps["relay hop 1"]["detail"]
    assert steps["relay hop 2"]["ok"] in (True, None), steps  # None: not probed yet
    assert steps["destination"]["ok"] and trace.returncode == 0, trace.stdout


def test_a_relay_forwards_nothing_from_outside_the_network(bed):
    """Datagrams to the relay's site link port from a stranger on the internet (the switch),
    whatever they carry (here an IPv4 packet to oslo's pod, as a relay would carry it),
    reach no pod: WireGuard takes only what its members' keys sealed. The relay counts them
    (status, /metrics), and keeps the count when its rules are repaired."""
    *_, oslo, home = bed.started
    (relay,) = [n for n in bed.started if str(n.subnet) == _placement(oslo, home)["via"]]
    chain = f"FLANNEL-SITE-{SITE_PORT}"
    members = eventually(lambda: _members(relay, chain, want=3), timeout=20)
    assert {str(outside_ip(3)), str(outside_ip(4))} <= set(members), members  # the NATs' addresses
    before = eventually(lambda: _strangers(relay), timeout=20)
    capture = start_capture(oslo.pod_ns, "eth0", 3)
    _forge(bed, relay, home, oslo)
    arrived = finish_capture(capture)
    assert not [r for r in arrived if r.get("dport") == 7777], arrived
    counted = eventually(lambda: _strangers(relay, at_least=before + 50), timeout=20)
    assert counted <= before + 50 + 5, (before, counted)  # the members' own traffic is not
    relay.run("iptables", "-F", chain)  # a firewall flush: repaired, the count kept
    eventually(lambda: _members(relay, chain, want=3), timeout=20)
    _forge(bed, relay, home, oslo)
    eventually(lambda: _strangers(relay, at_least=counted + 50), timeout=20)
    metrics = relay.endpoint("/metrics")
    total = re.search(r"^pyflannel_site_port_strangers_total (\S+)", metrics, re.M)
    assert total and float(total.group(1)) >= counted + 50, metrics
    assert "site port  " in relay.status_cli().stdout


def _forge(bed, relay, home, oslo) -> None:
    forged = _ipv4_udp(str(home.pod_ip), str(oslo.pod_ip))
    script = (
        "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
        f"[s.sendto(bytes.fromhex(sys.argv[1]),('{relay.underlay_ip}',{SITE_PORT})) for _ in range(50)]"
    )
    stranger = bed.lan  # the switch's own namespace: on the internet, no member of anything
    subprocess.run(
        ["ip", "netns", "exec", stranger, "python3", "-c", script, forged.hex()], check=True
    )


def _members(node, chain: str, want: int) -> list[str]:
    """The addresses the node's site port chain lets by uncounted (at least ``want``)."""
    listed = node.run("iptables", "-S", chain).stdout
    found = re.findall(r"-s (\S+)/32 .* -j RETURN", listed)
    assert len(found) >= want and "from no member" in listed, listed
    return found


def _strangers(node, at_least: int = 0) -> int:
    counted = node.status()["iptables"]["site_strangers"]
    assert counted is not None and counted >= at_least, counted
    return counted


def test_back_to_direct_once_the_nats_let_the_two_meet(bed):
    """Home's router now keeps ports (and forgot its flows): home learns its new outside
    port, oslo sends there, both open their routers: direct, the relay no longer used."""
    *_, oslo, home = bed.started
    bed.open_nat(4)

    def direct():
        for a, b in ((oslo, home), (home, oslo)):
            row = {r["subnet"]: r for r in a.status()["peers"]}[str(b.subnet)]
            assert row["placement"]["path"] == "across sites", row
            assert row["endpoint"]["last_handshake"] > 0, row
        return True

    eventually(direct, timeout=90)  # a new mapping learned, then the next direct try (30 s)
    row = {r["subnet"]: r for r in oslo.status()["peers"]}[str(home.subnet)]
    assert row["endpoint"]["endpoint"].startswith(f"{outside_ip(4)}:"), row
    for a, b in ((oslo, home), (home, oslo)):
        result = a.ping(b.pod_ip, count=5, interval=0.1)
        assert result.lost == 0, result


def test_the_office_line_renumbered_every_path_comes_back_by_itself(bed):
    """The office router gets another public address and forgets its flows while a pod in
    "de" pings a pod in the office. Nothing is restarted. The office node's next keepalive
    (at most --site-keepalive, 25 s, later) comes from the new address; the public nodes'
    WireGuard follows it at once, the office node learns its new outside address from their
    records and publishes it, and home, behind its own NAT, meets it there. Target: every
    pair of pods within 40 s (one keepalive interval, a handshake, two record rounds)."""
    de1, _, oslo, _ = bed.started
    for a in bed.started:  # everything works before
        for b in bed.started:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=30)
    ping = de1.start_ping(oslo.pod_ip, interval=0.2)
    time.sleep(1)
    started = time.monotonic()
    bed.renumber(3, IPv4Address("198.51.100.113"))
    back = {}
    for a in bed.started:
        for b in bed.started:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=60)
                back[(a.index, b.index)] = time.monotonic() - started
    result = de1.finish_ping(ping, interrupt=True)
    outage = _longest_gap(result.output) * 0.2
    print(
        f"renumbered office line: ping outage {outage:.1f} s; pairs back by {max(back.values()):.1f} s"
    )
    assert max(back.values()) < 40, back
    assert outage < 40, result.output[-500:]
    row = {r["subnet"]: r for r in de1.status()["peers"]}[str(oslo.subnet)]
    assert row["endpoint"]["endpoint"].startswith("198.51.100.113:"), row


def test_a_node_joining_behind_the_office_nat_reaches_every_site_at_once(bed):
    """A second office node starts: it reaches the other office node over the office LAN
    (VXLAN, same site), and the nodes of "de" and "home" through the site link, with nothing
    configured on the router or anywhere else."""
    de1, _, oslo, home = bed.started
    joiner = bed.nodes[4]
    started = time.monotonic()
    joiner.start(*ARGS, *bed.site_args(joiner), private_run=True)
    joiner.wait_ready()
    joiner.add_pod()
    ready = time.monotonic() - started
    first = {}
    for target in (oslo, de1, home):
        eventually(lambda t=target: _reaches(joiner, t), timeout=60, interval=0.2)
        first[bed.site_of(target)] = time.monotonic() - started
    print(f"joining office node: ready {ready:.1f} s; first pod reached: {first}")
    rows = {r["subnet"]: r for r in joiner.status()["peers"]}
    assert rows[str(oslo.subnet)]["encap"] == "vxlan"  # the office LAN, in clear
    assert rows[str(oslo.subnet)]["public_ip"] == str(oslo.underlay_ip)
    assert rows[str(de1.subnet)]["encap"] == "site"
    for target in (oslo, de1, home):  # and back
        eventually(lambda t=target: _reaches(t, joiner), timeout=30)
    bed.started.append(joiner)


def test_an_upstream_flanneld_in_de_is_reached_as_before_by_the_nodes_that_reach_its_ip(bed):
    """Upstream flanneld v0.20.2 on a "de" host (on its public interface, as it runs today):
    no node record, so the pyflannel nodes reach it as its lease says (VXLAN to its PublicIP,
    from their public address), and it reaches them at theirs. A node behind NAT it cannot
    reach: it sends to the PublicIP in that node's lease, an address behind the router (the
    README says so)."""
    from testbed.upstream import start_upstream

    require_upstream()
    de1, de2, oslo, *_ = bed.started
    upstream = bed.nodes[5]
    start_upstream(upstream)
    upstream.add_pod()
    for node in (de1, de2):
        for a, b in ((node, upstream), (upstream, node)):
            eventually(lambda a=a, b=b: _reaches(a, b), timeout=20)
    row = {r["subnet"]: r for r in de1.status()["peers"]}[str(upstream.subnet)]
    assert row["encap"] == "vxlan" and row["public_ip"] == str(upstream.underlay_ip), row
    assert row["placement"]["path"] == "as its lease says" and not row["placement"]["encrypted"]
    assert oslo.ping(upstream.pod_ip, count=3, interval=0.2, wait=1).received == 0


def _longest_gap(output: str) -> int:
    """The most echo requests in a row that got no reply (from ping's icmp_seq numbers)."""
    seqs = [int(n) for n in re.findall(r"icmp_seq=(\d+)", output)]
    return max((b - a - 1 for a, b in itertools.pairwise(seqs)), default=0)


def _placement(a, b) -> dict:
    return {r["subnet"]: r for r in a.status()["peers"]}[str(b.subnet)]["placement"]


def _ipv4_udp(src: str, dst: str) -> bytes:
    """An IPv4/UDP packet to port 7777 (checksums left 0: the kernel would take it)."""
    payload = b"forged"
    udp = struct.pack("!HHHH", 7777, 7777, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + udp


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1


def test_a_narrow_path_between_sites_is_fixed_on_the_site_link(bed):
    """The internet path between de2 and the office's router carries 1400-byte packets and
    drops larger ones without a word. Inside the site link (WireGuard: 60 bytes of headers,
    padding to 16) the pods' full 1420 bytes are lost there: both ends fix that path (the
    route into flannel-site carries what passes, locked; MSS clamped) and TCP crosses both
    ways; de1, on a full path, keeps 1420 to the office."""
    from testbed.nat import router_ns

    from .test_path_mtu import OFFLOADS, transfer

    de1, de2, oslo, *_ = bed.started
    router, office = router_ns(bed, 3), str(bed.outside.get(3, outside_ip(3)))
    off = [x for o in OFFLOADS for x in (o, "off")]
    for ns, devices in ((de2.ns, ("eth0",)), (oslo.ns, ("eth0",)), (router, ("eth0", "n3"))):
        for device in devices:
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", device, *off], check=False)
    size = ["-p", "udp", "-m", "length", "--length", "1401:65535", "-j", "DROP"]
    drops = [
        (de2.ns, "INPUT", ["-s", office, *size]),
        (router, "FORWARD", ["-s", str(de2.underlay_ip), *size]),
    ]
    for ns, chain, rule in drops:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I", chain, *rule], check=True)
    try:
        for a, b in ((de2, oslo), (oslo, de2)):
            fixed = eventually(lambda a=a, b=b: _path_mtu(a, b), timeout=40)
            assert 1300 <= fixed < 1420, fixed
        route = de2.run("ip", "route", "show", str(oslo.subnet)).stdout
        assert "dev flannel-site" in route and "mtu lock" in route, route
        assert transfer(de2, oslo, megabytes=20) == 20 << 20
        assert transfer(oslo, de2, megabytes=20) == 20 << 20
        assert de1.ping(oslo.pod_ip, count=3, size=1420 - 28, dont_fragment=True).received == 3
    finally:
        for ns, chain, rule in drops:
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D", chain, *rule], check=True)


def _path_mtu(node, peer) -> int:
    row = {r["subnet"]: r for r in node.status()["peers"]}[str(peer.subnet)]
    fixed = (row["path"] or {}).get("path_mtu")
    assert fixed, row["path"]
    return fixed
