"""The requests for the kernel entries pyflannel owns per peer (kernel/requests.py) and the
netlink framing (kernel/codec.py): our bytes decode to what we meant, and pyroute2's
independent decoder reads them the same way."""

from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.kernel import codec as c
from pyflannel.kernel import requests as r
from pyflannel.kernel.message import NEIGH, ROUTE

DST = IPv4Network("10.1.2.0/24")
GW = IPv4Address("10.1.2.0")


def only(data: bytes):
    (message,) = list(c.messages(data))
    return message


def route(payload) -> tuple:
    """(dst, gateway, oif, flags, protocol, table, type) of a route message."""
    msg = ROUTE.decode(payload)
    gateway = msg.get_attr("RTA_GATEWAY")
    return (
        ip_network((msg.get_attr("RTA_DST"), msg["dst_len"])),
        ip_address(gateway) if gateway else None,
        msg.get_attr("RTA_OIF"),
        msg["flags"],
        msg["proto"],
        msg.get_attr("RTA_TABLE") or msg["table"],
        msg["type"],
    )


def neighbour(payload) -> tuple:
    msg = NEIGH.decode(payload)
    fields = tuple(msg[k] for k in ("family", "ifindex", "state", "flags"))
    return (*fields, msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR"))


def test_route_replace_round_trip_and_flags():
    kind, flags, seq, payload = only(r.route_replace(7, DST, GW, 5, True, 152))
    assert (kind, flags, seq) == (c.RTM_NEWROUTE, c.REPLACE, 7)
    assert route(payload) == (DST, GW, 5, c.RTNH_F_ONLINK, 152, 254, c.RTN_UNICAST)


def test_route_replace_without_gateway_or_device():
    _, _, _, payload = only(r.route_replace(1, DST, None, None, False, 152))
    assert route(payload) == (DST, None, None, 0, 152, 254, c.RTN_UNICAST)


def test_pyroute2_reads_our_route_like_we_do():
    msg = rtmsg(r.route_replace(9, DST, GW, 5, True, 152))
    msg.decode()
    assert (msg["dst_len"], msg["proto"], msg["table"], msg["flags"]) == (24, 152, 254, 4)
    assert (msg.get_attr("RTA_DST"), msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF")) == (
        "10.1.2.0",
        "10.1.2.0",
        5,
    )
    assert msg["header"]["sequence_number"] == 9


def test_route_delete_names_our_protocol():
    kind, flags, _, payload = only(r.route_delete(3, DST, 152))
    assert (kind, flags) == (c.RTM_DELROUTE, c.DELETE)
    assert route(payload)[0] == DST and route(payload)[4] == 152


def test_neighbour_and_fdb_messages():
    _, _, _, payload = only(r.neighbour_replace(1, 4, GW, "02:aa:bb:cc:dd:ee"))
    assert neighbour(payload) == (c.AF_INET, 4, c.NUD_PERMANENT, 0, GW, "02:aa:bb:cc:dd:ee")
    _, _, _, payload = only(r.fdb_replace(2, 4, "02:aa:bb:cc:dd:ee", IPv4Address("198.51.100.2")))
    family, ifindex, state, flags, dst, lladdr = neighbour(payload)
    assert (family, ifindex, state, flags) == (c.AF_BRIDGE, 4, c.NUD_PERMANENT, c.NTF_SELF)
    assert (dst, lladdr) == (IPv4Address("198.51.100.2"), "02:aa:bb:cc:dd:ee")


def test_pyroute2_reads_our_fdb_entry_like_we_do():
    msg = ndmsg(r.fdb_replace(2, 4, "02:aa:bb:cc:dd:ee", IPv4Address("198.51.100.2")))
    msg.decode()
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (7, 4, 0x80, 2)
    assert (msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")) == (
        "02:aa:bb:cc:dd:ee",
        "198.51.100.2",
    )


def test_several_messages_in_one_datagram_and_garbage_after_them():
    data = r.neighbour_delete(1, 4, GW) + r.route_delete(2, DST, 152) + b"\x03\x00"
    assert [(k, s) for k, _, s, _ in c.messages(data)] == [(c.RTM_DELNEIGH, 1), (c.RTM_DELROUTE, 2)]


def test_error_codes():
    ack = (0).to_bytes(4, "little", signed=True) + bytes(16)
    enoent = (-2).to_bytes(4, "little", signed=True) + bytes(16)
    assert c.error_code(memoryview(ack)) == 0 and c.error_code(memoryview(enoent)) == 2


def test_route_delete_matches_pyroute2s_which_the_kernel_accepts():
    from pyroute2 import IPBatch

    batch = IPBatch()
    batch.route("del", dst="10.1.2.0/24", table=254, proto=152)
    theirs = rtmsg(bytes(batch.batch))
    theirs.decode()
    _, _, _, payload = only(r.route_delete(1, DST, 152))
    ours = ROUTE.header.unpack(payload)
    fields = ("family", "dst_len", "tos", "table", "proto", "scope", "type", "flags")
    assert tuple(ours[k] for k in fields) == (
        theirs["family"],
        theirs["dst_len"],
        theirs["tos"],
        theirs["table"],
        theirs["proto"],
        theirs["scope"],
        theirs["type"],
        theirs["flags"],
    )


def test_a_blackhole_route_carries_its_type_and_metric():
    _, _, _, payload = only(r.route_replace(2, DST, None, None, False, 152, c.RTN_BLACKHOLE, 7))
    assert route(payload) == (DST, None, None, 0, 152, 254, c.RTN_BLACKHOLE)
    msg = rtmsg(r.route_replace(2, DST, None, None, False, 152, c.RTN_BLACKHOLE, 7))
    msg.decode()
    assert (msg["type"], msg.get_attr("RTA_PRIORITY")) == (c.RTN_BLACKHOLE, 7)
