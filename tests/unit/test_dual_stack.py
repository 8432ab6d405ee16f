"""Dual-stack pure logic: IPv6 subnet choice, a peer's IPv6 half and its kernel entries, the
netlink messages for IPv6, the interface's IPv6 address, the MTU that fits both families,
ip6tables and nftables ip6 rules, subnet.env and docker-opts, and doctor's verdicts."""

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.backend.kernel import Devices
from pyflannel.backend.mtu import dual_stack_mtu, overlay_mtu
from pyflannel.backend.plan import (
    Peer,
    Peer6,
    PeerDataError,
    Route,
    Via,
    ipv6_half,
    overlay_entries,
    peer_entries,
    public_ipv6_of,
    underlay_route,
)
from pyflannel.backend.vxlan.peer import vxlan_peer6
from pyflannel.errors import InterfaceError, OutOfSubnets
from pyflannel.kernel import codec as c
from pyflannel.kernel import requests as r
from pyflannel.kernel.iface import IFA_F_TEMPORARY, Address, Interface, select_ext_iface, with_ipv6
from pyflannel.ops.docker_opts import DockerOptsError, docker_options
from pyflannel.ops.doctor.checks import FAIL, PASS, WARN, Probe, judge_ipv6
from pyflannel.subnet.allocate import choose_subnet, fits_config6
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.env_file import SubnetEnv, previous_network6, previous_subnet6
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.traffic import nftables_rules as nft
from pyflannel.traffic.iptables_rules import (
    cleanup_payload,
    drift,
    forward_rules,
    masquerade_rules,
)
from pyflannel.traffic.ownership import names_network_inside
from tests.unit.test_netlink_codec import only, route

CFG = parse_network_config(
    '{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd10::/48"}'
)
CFG4 = parse_network_config('{"Network": "10.1.0.0/16"}')
ME = IPv4Address("198.51.100.1")
NET6 = IPv6Network("fd10::/48")


def lease(subnet: str, subnet6: str | None, owner: str = "198.51.100.9", rev: int = 5) -> Lease:
    return Lease(
        IPv4Network(subnet),
        LeaseAttrs(IPv4Address(owner)),
        IPv6Network(subnet6) if subnet6 else None,
    )


# -- choosing the IPv6 subnet -------------------------------------------------------------


def test_a_new_node_gets_a_free_subnet_of_each_family():
    claim = choose_subnet(CFG, [lease("10.1.1.0/24", "fd10:0:0:1::/64")], ME, rng=random.Random(1))
    assert claim.reason == "allocated" and claim.ipv6_subnet is not None
    assert claim.ipv6_subnet.prefixlen == 64 and claim.ipv6_subnet.subnet_of(NET6)
    assert claim.ipv6_subnet != IPv6Network("fd10:0:0:1::/64")
    assert claim.ipv6_subnet != IPv6Network("fd10::/64")  # the first subnet is never handed out


def test_the_previous_subnets_of_both_families_are_reused_when_free():
    claim = choose_subnet(
        CFG,
        [],
        ME,
        previous=IPv4Network("10.1.7.0/24"),
        previous6=IPv6Network("fd10:0:0:7::/64"),
    )
    assert (claim.reason, claim.subnet, claim.ipv6_subnet) == (
        "previous",
        IPv4Network("10.1.7.0/24"),
        IPv6Network("fd10:0:0:7::/64"),
    )


def test_a_previous_ipv6_subnet_someone_holds_is_not_reused():
    taken = lease("10.1.9.0/24", "fd10:0:0:7::/64")
    claim = choose_subnet(CFG, [taken], ME, previous6=IPv6Network("fd10:0:0:7::/64"))
    assert claim.ipv6_subnet != IPv6Network("fd10:0:0:7::/64")


def test_reuse_needs_both_halves_to_fit_the_config():
    mine = lease("10.1.4.0/24", "fd10:0:0:4::/64", owner=str(ME))
    assert choose_subnet(CFG, [mine], ME).reason == "reuse"
    v4_only = lease("10.1.4.0/24", None, owner=str(ME))
    claim = choose_subnet(CFG, [v4_only], ME)  # the network became dual-stack
    assert claim.reason != "reuse" and claim.stale == (v4_only,)
    assert choose_subnet(CFG4, [mine], ME).stale == (mine,)  # and back to IPv4 only
    assert fits_config6(CFG4, None) and not fits_config6(CFG, None)
    assert not fits_config6(CFG, IPv6Network("fd11::/64"))
    assert not fits_config6(CFG, IPv6Network("fd10::/56"))


def test_out_of_ipv6_subnets_is_said():
    cfg = parse_network_config(
        '{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd10::/62", '
        '"IPv6SubnetLen": 64}'
    )
    taken = [lease(f"10.1.{i}.0/24", f"fd10:0:0:{i}::/64") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets, match="out of IPv6 subnets"):
        choose_subnet(cfg, taken, ME)


# -- a peer's IPv6 half ---------------------------------------------------------------------


def dual_lease(**attrs) -> Lease:
    base = dict(
        public_ip=IPv4Address("198.51.100.2"),
        public_ipv6=IPv6Address("fd00::2"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:02"},
        backend_v6_data={"VNI": 1, "VtepMAC": "02:00:00:00:06:02"},
    )
    base.update(attrs)
    return Lease(IPv4Network("10.1.2.0/24"), LeaseAttrs(**base), IPv6Network("fd10:0:0:2::/64"))


def test_the_ipv6_half_of_a_vxlan_peer():
    lease = dual_lease()
    subnet6 = ipv6_half(lease, NET6, IPv6Network("fd10:0:0:1::/64"))
    half = vxlan_peer6(lease, subnet6)
    assert half == Peer6(subnet6, IPv6Address("fd00::2"), "vxlan", "02:00:00:00:06:02")
    assert half.entries == overlay_entries(subnet6, "02:00:00:00:06:02", IPv6Address("fd00::2"))


@pytest.mark.parametrize(
    "lease, own6, words",
    [
        (dual_lease(), IPv6Network("fd10:0:0:2::/64"), "overlaps this node's"),
        (
            Lease(dual_lease().subnet, dual_lease().attrs, IPv6Network("fd99::/64")),
            None,
            "not a subnet of the network",
        ),
        (Lease(dual_lease().subnet, dual_lease().attrs), None, "no IPv6 subnet"),
    ],
)
def test_an_unusable_ipv6_subnet_is_refused_with_its_reason(lease, own6, words):
    with pytest.raises(PeerDataError, match=words):
        ipv6_half(lease, NET6, own6)


@pytest.mark.parametrize(
    "attrs, words",
    [
        ({"backend_v6_data": None}, "BackendV6Data is missing"),
        ({"backend_v6_data": {"VtepMAC": "02:00:00:00:00:02"}}, "also the IPv4 device's"),
        ({"backend_v6_data": {"VtepMAC": "01:00:00:00:00:02"}}, "multicast"),
        ({"public_ipv6": None}, "PublicIPv6 is missing"),
        ({"public_ipv6": IPv6Address("fe80::2")}, "cannot be a tunnel endpoint"),
        ({"public_ipv6": IPv6Address("::1")}, "cannot be a tunnel endpoint"),
    ],
)
def test_bad_ipv6_backend_data_is_refused(attrs, words):
    lease = dual_lease(**attrs)
    with pytest.raises(PeerDataError, match=words):
        vxlan_peer6(lease, IPv6Network("fd10:0:0:2::/64"))
    if "public_ipv6" in attrs:
        with pytest.raises(PeerDataError):
            public_ipv6_of(lease)


def test_a_dual_stack_peer_needs_entries_of_both_families():
    subnet6, ip6 = IPv6Network("fd10:0:0:2::/64"), IPv6Address("fd00::2")
    subnet, ip = IPv4Network("10.1.2.0/24"), IPv4Address("198.51.100.2")
    v6 = Peer6(subnet6, ip6, "vxlan", "02:06", entries=overlay_entries(subnet6, "02:06", ip6))
    peer = Peer(subnet, ip, "vxlan", "02:04", entries=overlay_entries(subnet, "02:04", ip))
    entries = peer_entries(Peer(**{**peer.__dict__, "v6": v6}))
    assert entries.neighbours == {
        IPv4Address("10.1.2.0"): "02:04",
        IPv6Address("fd10:0:0:2::"): "02:06",
    }
    assert entries.fdb == {"02:04": IPv4Address("198.51.100.2"), "02:06": IPv6Address("fd00::2")}
    assert entries.routes[IPv6Network("fd10:0:0:2::/64")] == Route(
        IPv6Address("fd10:0:0:2::"), Via.ONLINK
    )
    direct = Peer6(subnet6, ip6, "direct", entries=underlay_route(subnet6, ip6))
    hostgw = peer_entries(Peer(subnet, ip, "direct", v6=direct, entries=underlay_route(subnet, ip)))
    assert hostgw.routes == {
        peer.subnet: Route(peer.public_ip, Via.UNDERLAY),
        v6.subnet: Route(IPv6Address("fd00::2"), Via.UNDERLAY),
    }
    assert not hostgw.neighbours and not hostgw.fdb


def test_devices_pick_the_device_and_own_routes_by_family():
    devices = Devices(overlay=3, overlay6=4, networks=(IPv4Network("10.1.0.0/16"), NET6))
    assert devices.overlay_for(IPv6Address("fd10::")) == 4
    assert devices.overlay_for(IPv4Network("10.1.2.0/24")) == 3
    assert devices.owns_route(IPv6Network("fd10:0:0:2::/64"))
    assert not devices.owns_route(IPv6Network("fd11::/64"))
    assert not Devices(networks=(IPv4Network("10.1.0.0/16"),)).owns_route(IPv6Network("::/0"))


# -- netlink messages -------------------------------------------------------------------------

DST6 = IPv6Network("fd10:0:0:2::/64")
GW6 = IPv6Address("fd10:0:0:2::")


def test_ipv6_route_round_trip_and_pyroute2_agrees():
    data = r.route_replace(7, DST6, GW6, 5, True, 152)
    assert route(only(data)[3]) == (DST6, GW6, 5, c.RTNH_F_ONLINK, 152, 254, c.RTN_UNICAST)
    msg = rtmsg(data)
    msg.decode()
    assert (msg["family"], msg["dst_len"], msg.get_attr("RTA_DST")) == (10, 64, "fd10:0:0:2::")
    _, _, _, payload = only(r.route_delete(3, DST6, 152))
    assert route(payload)[0] == DST6


def test_ipv6_neighbour_and_fdb_messages():
    msg = ndmsg(r.neighbour_replace(1, 4, GW6, "02:aa:bb:cc:dd:ee"))
    msg.decode()
    assert (msg["family"], msg.get_attr("NDA_DST")) == (10, "fd10:0:0:2::")
    msg = ndmsg(r.fdb_replace(2, 4, "02:aa:bb:cc:dd:ee", IPv6Address("fd00::2")))
    msg.decode()
    assert (msg["family"], msg.get_attr("NDA_DST")) == (7, "fd00::2")


# -- the interface's IPv6 side ----------------------------------------------------------------

ETH0 = Interface(
    "eth0",
    2,
    1500,
    [
        Address(IPv4Address("198.51.100.1"), 24),
        Address(IPv6Address("fe80::1"), 64, 253),
        Address(IPv6Address("fd00::99"), 64, 0, IFA_F_TEMPORARY),
        Address(IPv6Address("fd00::1"), 64),
    ],
)


def test_the_first_stable_global_ipv6_address_is_used():
    ext = with_ipv6(select_ext_iface([ETH0], iface=["eth0"]), [ETH0])
    assert (ext.iface_addr, ext.iface_addr6, ext.public_ipv6) == (
        IPv4Address("198.51.100.1"),
        IPv6Address("fd00::1"),
        IPv6Address("fd00::1"),
    )
    public = with_ipv6(select_ext_iface([ETH0], iface=["eth0"]), [ETH0], IPv6Address("2001:db8::1"))
    assert public.public_ipv6 == IPv6Address("2001:db8::1") and "public IPv6" in public.describe()


def test_no_global_ipv6_address_is_a_clear_error():
    v4only = Interface("eth0", 2, 1500, [Address(IPv4Address("198.51.100.1"), 24)])
    with pytest.raises(InterfaceError, match="has no global IPv6 address"):
        with_ipv6(select_ext_iface([v4only], iface=["eth0"]), [v4only])


def test_ipv6_addresses_never_become_the_ipv4_side():
    """--iface-regex matching only an IPv6 address does not choose it as the IPv4 address."""
    with pytest.raises(InterfaceError, match="no interface or address matches"):
        select_ext_iface([ETH0], iface_regex=["^fd00:"])
    assert select_ext_iface([ETH0], iface_regex=["^198"]).iface_addr == IPv4Address("198.51.100.1")


# -- MTU --------------------------------------------------------------------------------------


def test_one_pod_mtu_fits_vxlan_over_both_families():
    assert overlay_mtu("vxlan", 1500, ipv6_underlay=True) == 1430
    assert dual_stack_mtu("vxlan", 1500) == 1430  # upstream writes 1450
    assert dual_stack_mtu("host-gw", 1500) == 1500
    with pytest.raises(ValueError, match="IPv6 needs at least 1280"):
        dual_stack_mtu("vxlan", 1300)


# -- rules ------------------------------------------------------------------------------------

POD6 = IPv6Network("fd10:0:0:5::/64")


def test_ip6tables_rules_are_upstreams_with_the_ipv6_multicast_range():
    lines = [r.line for r in masquerade_rules(NET6, POD6, True)]
    c = '-m comment --comment "flanneld masq"'
    assert f"-A FLANNEL-POSTRTG -s {NET6} ! -d ff00::/8 {c} -j MASQUERADE --random-fully" in lines
    assert f"-A FLANNEL-POSTRTG -s {POD6} -d {NET6} {c} -j RETURN" in lines
    assert [r.line for r in forward_rules(NET6)][1].startswith(f"-A FLANNEL-FWD -s {NET6} ")


def test_ipv6_rules_are_owned_by_their_network_only():
    assert names_network_inside(f"-s {POD6} -d {NET6}", NET6)
    assert not names_network_inside(f"-s {POD6}", IPv4Network("10.1.0.0/16"))
    assert not names_network_inside("-s 10.1.0.0/16", NET6)
    rules = masquerade_rules(NET6, POD6, True)
    listed = {"nat": [f"-N {rules[1].chain}", *(r.line for r in rules)]}
    assert drift(rules, listed, NET6) == []
    other = '-A FLANNEL-POSTRTG -s fd20::/48 -d fd20::/48 -m comment --comment "flanneld masq" -j RETURN'
    assert drift(rules, {"nat": [*listed["nat"], other]}, NET6) == []  # another network's
    payload = cleanup_payload("nat", listed["nat"], NET6)
    assert payload is not None and "-X FLANNEL-POSTRTG" in payload


def test_nftables_ip6_table_and_rules():
    assert nft.table_of(NET6) == ("ip6", "flannel-ipv6")
    assert nft.table_of(IPv4Network("10.1.0.0/16")) == ("ip", "flannel-ipv4")
    texts = [r.text for r in nft.masquerade_rules(NET6, POD6, True)]
    assert f"ip6 saddr {NET6} ip6 daddr != ff00::/8 masquerade fully-random" in texts
    script = nft.transaction(nft.forward_rules(NET6), nft.Listing(), NET6)
    assert (
        script.splitlines()[0]
        == 'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }'
    )
    assert f"add rule ip6 flannel-ipv6 forward ip6 saddr {NET6} accept" in script
    listing = nft.Listing({"forward": [(f"ip6 saddr {NET6} accept", 4)]})
    assert nft.cleanup(listing, NET6) == "delete table ip6 flannel-ipv6\n"


# -- files and verdicts -----------------------------------------------------------------------


def test_subnet_env_of_a_dual_stack_lease_and_reading_it_back(tmp_path):
    held = lease("10.1.5.0/24", "fd10:0:0:5::/64")
    text = SubnetEnv.for_lease(CFG, held, 1430, True).render()
    assert text == (
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:5::1/64\n"
        "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
    )
    path = tmp_path / "subnet.env"
    path.write_text(text)
    assert previous_subnet6(path) == IPv6Network("fd10:0:0:5::/64")
    assert previous_network6(path) == NET6
    assert "IPV6" not in SubnetEnv.for_lease(CFG4, held, 1450, True).render()


def test_docker_opts_give_docker_the_ipv6_subnet():
    env = {
        "FLANNEL_SUBNET": "10.1.5.1/24",
        "FLANNEL_MTU": "1430",
        "FLANNEL_IPMASQ": "true",
        "FLANNEL_IPV6_SUBNET": "fd10:0:0:5::1/64",
    }
    out = docker_options(env)
    assert 'DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=fd10:0:0:5::/64"' in out
    assert out.splitlines()[-1].endswith('--mtu=1430 --ipv6 --fixed-cidr-v6=fd10:0:0:5::/64"')
    with pytest.raises(DockerOptsError, match="not an IPv6 CIDR"):
        docker_options({**env, "FLANNEL_IPV6_SUBNET": "10.1.5.1/24"})


@pytest.mark.parametrize(
    "facts, dual, status, words",
    [
        ({"address": "fd00::1", "forwarding": "1", "ip6tables": True}, True, PASS, "forwarding on"),
        ({"address": None, "forwarding": "1", "ip6tables": True}, True, FAIL, "no global IPv6"),
        ({"address": "fd00::1", "forwarding": "0", "ip6tables": True}, True, WARN, "forwarding"),
        ({"address": "fd00::1", "forwarding": "1", "ip6tables": False}, True, WARN, "ip6tables"),
        ({"address": None}, False, PASS, "IPv4-only network"),
    ],
)
def test_doctor_ipv6_verdicts(facts, dual, status, words):
    finding = judge_ipv6(Probe(True, facts={"interface": "eth0", **facts}), dual)
    assert finding.status == status and words in finding.detail


def test_icmpv6_probe_packets():
    from pyflannel.ops.mesh.prober import ICMPV6_ECHO, echo_request6, parse_reply6

    request = echo_request6(0x1234, 7, b"12345678", 1430)
    assert len(request) == 1430 - 40 and request[0] == ICMPV6_ECHO
    reply = bytes([129]) + request[1:]
    assert parse_reply6(reply, "fd10:0:0:5::%eth0") == (
        IPv6Address("fd10:0:0:5::"),
        0x1234,
        7,
        b"12345678",
    )
    assert parse_reply6(request, "fd10::") is None  # a request is no reply
    assert parse_reply6(reply[:10], "fd10::") is None
    assert parse_reply6(reply, "junk") is None
