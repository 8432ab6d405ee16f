"""The message tables (kernel/message.py) both ways, and the device and address requests built
from them (kernel/requests.py): pyroute2's independent decoder reads our requests as we meant
them, we read its encodings of the kernel's answers and notifications as it does, and what a
table encodes it decodes back."""

import struct
from ipaddress import ip_address

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.kernel import codec
from pyflannel.kernel import requests as d
from pyflannel.kernel.codec import RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK
from pyflannel.kernel.links import Link, Vxlan
from pyflannel.kernel.message import LINK, ROUTE, VXLAN, Attrs, decode
from pyflannel.kernel.nlsocket import NLM_F_ACK_TLVS, error_of


def pyroute2_reads(cls, data: bytes):
    msg = cls(data)
    msg.decode()
    return msg


def encoded(cls, fields: dict, attrs: list) -> bytes:
    msg = cls()
    msg.update(fields)
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def payload(data: bytes) -> tuple[int, memoryview]:
    ((kind, _, _, body),) = list(codec.messages(data))
    return kind, body


def test_pyroute2_reads_our_vxlan_device_as_we_meant_it():
    data = Vxlan(1, ip_address("198.51.100.1"), underlay=2, port=8472, gbp=True).data()
    msg = pyroute2_reads(
        ifinfmsg, d.new_link(3, "flannel.1", "vxlan", "02:11:22:33:44:55", 1450, data)
    )
    assert (
        msg["header"]["type"] == RTM_NEWLINK and msg["header"]["flags"] == 0x605
    )  # request, ack, excl, create
    assert (msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MTU")) == ("flannel.1", 1450)
    assert msg.get_attr("IFLA_ADDRESS") == "02:11:22:33:44:55"
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    vx = info.get_attr("IFLA_INFO_DATA")
    assert (vx.get_attr("IFLA_VXLAN_ID"), vx.get_attr("IFLA_VXLAN_LINK")) == (1, 2)
    assert (vx.get_attr("IFLA_VXLAN_LOCAL"), vx.get_attr("IFLA_VXLAN_PORT")) == (
        "198.51.100.1",
        8472,
    )
    assert vx.get_attr("IFLA_VXLAN_LEARNING") == 0 and vx.get_attr("IFLA_VXLAN_GBP") is not None


def test_an_ipv6_vxlan_device_carries_local6_and_no_gbp():
    data = Vxlan(1, ip_address("fd00::1"), learning=True).data()
    vx = (
        pyroute2_reads(ifinfmsg, d.new_link(1, "flannel-v6.1", "vxlan", data=data))
        .get_attr("IFLA_LINKINFO")
        .get_attr("IFLA_INFO_DATA")
    )
    assert vx.get_attr("IFLA_VXLAN_LOCAL6") == "fd00::1" and vx.get_attr("IFLA_VXLAN_LOCAL") is None
    assert vx.get_attr("IFLA_VXLAN_LEARNING") == 1 and vx.get_attr("IFLA_VXLAN_GBP") is None
    assert vx.get_attr("IFLA_VXLAN_LINK") is None and vx.get_attr("IFLA_VXLAN_PORT") is None


def test_set_link_changes_only_what_it_is_asked():
    up = pyroute2_reads(ifinfmsg, d.set_link(1, 7, up=True))
    assert (up["index"], up["flags"], up["change"], up.get_attr("IFLA_MTU")) == (7, 1, 1, None)
    mtu = pyroute2_reads(ifinfmsg, d.set_link(2, 7, mtu=1400, txqlen=5000))
    assert (mtu["flags"], mtu["change"], mtu.get_attr("IFLA_MTU")) == (0, 0, 1400)
    assert mtu.get_attr("IFLA_TXQLEN") == 5000


def test_address_requests_as_ip_addr_sends_them():
    add = pyroute2_reads(ifaddrmsg, d.address(4, 7, "10.1.5.0", 32))
    assert add["header"]["type"] == RTM_NEWADDR and add["header"]["flags"] & 0x500 == 0x500
    assert (add["index"], add["prefixlen"], add["family"]) == (7, 32, 2)
    assert (add.get_attr("IFA_LOCAL"), add.get_attr("IFA_ADDRESS")) == ("10.1.5.0", "10.1.5.0")
    gone = pyroute2_reads(ifaddrmsg, d.address(5, 7, "fd00::1", 128, delete=True, flags=2))
    assert gone["header"]["type"] == RTM_DELADDR and gone["flags"] == 2
    assert (gone.get_attr("IFA_ADDRESS"), gone.get_attr("IFA_LOCAL")) == ("fd00::1", None)


def test_route_lookup_asks_for_one_host():
    msg = pyroute2_reads(rtmsg, d.get_route(6, "fd00::5"))
    assert (msg["family"], msg["dst_len"], msg.get_attr("RTA_DST")) == (10, 128, "fd00::5")


def test_we_read_a_link_as_pyroute2_encodes_it():
    data = encoded(
        ifinfmsg,
        {"index": 9, "flags": 0x1043, "header": {"type": RTM_NEWLINK}},
        [
            ["IFLA_IFNAME", "flannel.1"],
            ["IFLA_MTU", 1450],
            ["IFLA_ADDRESS", "02:11:22:33:44:55"],
            [
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ["IFLA_INFO_KIND", "vxlan"],
                        [
                            "IFLA_INFO_DATA",
                            {"attrs": [["IFLA_VXLAN_ID", 1], ["IFLA_VXLAN_PORT", 8472]]},
                        ],
                    ]
                },
            ],
        ],
    )
    msg = decode(*payload(data))
    assert (msg["event"], msg["index"], msg["flags"]) == ("RTM_NEWLINK", 9, 0x1043)
    assert (msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MTU")) == ("flannel.1", 1450)
    assert msg.get_attr("IFLA_ADDRESS") == "02:11:22:33:44:55"
    vx = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert (vx.get_attr("IFLA_VXLAN_ID"), vx.get_attr("IFLA_VXLAN_PORT")) == (1, 8472)
    assert vx.get_attr("IFLA_VXLAN_LOCAL") is None


def test_we_read_notifications_as_pyroute2_encodes_them():
    gone = decode(*payload(encoded(ifinfmsg, {"index": 3, "header": {"type": RTM_DELLINK}}, [])))
    assert (gone["event"], gone["index"], gone.get_attr("IFLA_IFNAME")) == ("RTM_DELLINK", 3, None)
    address = decode(
        *payload(
            encoded(
                ifaddrmsg,
                {"family": 2, "prefixlen": 24, "index": 2, "header": {"type": RTM_NEWADDR}},
                [["IFA_ADDRESS", "198.51.100.1"]],
            )
        )
    )
    assert (address["event"], address["index"], address["prefixlen"]) == ("RTM_NEWADDR", 2, 24)
    assert address.get_attr("IFA_ADDRESS") == ip_address("198.51.100.1")  # typed values
    route = decode(
        *payload(
            encoded(
                rtmsg,
                {"family": 2, "dst_len": 24, "proto": 152, "header": {"type": codec.RTM_DELROUTE}},
                [["RTA_DST", "10.1.2.0"], ["RTA_GATEWAY", "10.1.2.0"], ["RTA_OIF", 4]],
            )
        )
    )
    assert (route["event"], route["proto"], route["dst_len"]) == ("RTM_DELROUTE", 152, 24)
    assert (route.get_attr("RTA_DST"), route.get_attr("RTA_OIF")) == (ip_address("10.1.2.0"), 4)
    fdb = decode(
        *payload(
            encoded(
                ndmsg,
                {"family": 7, "ifindex": 5, "header": {"type": codec.RTM_DELNEIGH}},
                [["NDA_LLADDR", "02:aa:bb:cc:dd:ee"], ["NDA_DST", "198.51.100.2"]],
            )
        )
    )
    assert (fdb["event"], fdb["family"], fdb["ifindex"]) == ("RTM_DELNEIGH", 7, 5)
    assert (fdb.get_attr("NDA_LLADDR"), fdb.get_attr("NDA_DST")) == (
        "02:aa:bb:cc:dd:ee",
        ip_address("198.51.100.2"),
    )


def test_messages_we_do_not_read_or_cannot_read_are_none():
    assert decode(codec.NLMSG_DONE, memoryview(b"\0" * 4)) is None
    assert decode(RTM_NEWLINK, memoryview(b"\0" * 3)) is None  # shorter than its header


def test_a_kernel_error_carries_the_kernels_sentence():
    sentence = b"A VXLAN device with the specified VNI already exists\0"
    header = codec.NLMSG_HDR.pack(16, RTM_NEWLINK, 0x605, 3, 0)  # the request's, capped
    tlv = codec.attr(1, sentence)
    error = error_of(memoryview(struct.pack("=i", -17) + header + tlv), NLM_F_ACK_TLVS | 0x100)
    assert error is not None and error.code == 17
    assert error.args[1] == sentence[:-1].decode()
    request = d.new_link(3, "flannel.1", "vxlan")  # echoed whole by a kernel not capping
    whole = error_of(memoryview(struct.pack("=i", -17) + request + tlv), NLM_F_ACK_TLVS)
    assert whole is not None and whole.args[1] == sentence[:-1].decode()
    plain = error_of(memoryview(struct.pack("=i", -19) + header), 0x100)
    assert plain is not None and plain.args[1] == "No such device"
    assert error_of(memoryview(struct.pack("=i", 0) + header), 0x100) is None  # an ack


def test_an_error_at_the_end_of_a_dump_is_raised_with_its_sentence():
    """NLMSG_DONE carries an error code too (a dump the kernel could not finish), then the
    kernel's sentence directly (no echoed request)."""
    tlv = codec.attr(1, b"Dump interrupted\0")
    done = error_of(memoryview(struct.pack("=i", -4) + tlv), NLM_F_ACK_TLVS, done=True)
    assert done is not None and done.code == 4 and done.args[1] == "Dump interrupted"
    assert error_of(memoryview(struct.pack("=i", 0)), 0, done=True) is None  # a clean end


# -- one table, both ways ----------------------------------------------------------------------


def test_a_vxlan_device_decodes_to_the_settings_it_was_created_with():
    for want in (
        Vxlan(7, ip_address("198.51.100.1"), underlay=2, port=4789, learning=True, gbp=True),
        Vxlan(1, ip_address("fd00::1")),
    ):
        request = d.new_link(3, "flannel.7", "vxlan", "02:11:22:33:44:55", 1450, want.data())
        kind, body = payload(request)
        link = Link.of(decode(kind, body))
        assert (link.name, link.kind, link.mac, link.mtu, link.up) == (
            "flannel.7",
            "vxlan",
            "02:11:22:33:44:55",
            1450,
            False,
        )
        assert link.vxlan == want


def test_every_route_attribute_round_trips_through_its_table():
    values = {
        "RTA_DST": ip_address("10.1.2.0"),
        "RTA_OIF": 5,
        "RTA_GATEWAY": ip_address("10.1.2.0"),
        "RTA_PRIORITY": 0xFFFFFFFF,
        "RTA_PREFSRC": ip_address("10.1.1.0"),
        "RTA_TABLE": 254,
    }
    metrics = {"RTAX_LOCK": 1 << codec.RTAX_MTU, "RTAX_MTU": 1350}  # ip route ... mtu lock 1350
    assert set(values) | {"RTA_METRICS"} == set(ROUTE.attrs.by_name)  # every row: a new one joins
    header = {"family": 2, "dst_len": 24, "table": 254, "proto": 152, "type": 1, "flags": 4}
    wire = ROUTE.encode(codec.RTM_NEWROUTE, 0, 1, header, {**values, "RTA_METRICS": metrics})
    _, body = payload(wire)
    back = ROUTE.decode(body)
    assert back.attrs.pop("RTA_METRICS").attrs == metrics
    assert back.attrs == values and {k: back[k] for k in header} == header
    theirs = pyroute2_reads(rtmsg, wire)
    assert theirs.get_attr("RTA_METRICS").get_attr("RTAX_MTU") == 1350
    assert theirs.get_attr("RTA_METRICS").get_attr("RTAX_LOCK") == 4
    assert {name: theirs.get_attr(name) for name in values} == {
        name: str(v) if name in ("RTA_DST", "RTA_GATEWAY", "RTA_PREFSRC") else v
        for name, v in values.items()
    }  # pyroute2 spells addresses as text


def test_a_link_reads_back_every_row_of_its_table():
    attrs = {
        "IFLA_ADDRESS": "02:11:22:33:44:55",
        "IFLA_IFNAME": "flannel.1",
        "IFLA_MTU": 1450,
        "IFLA_TXQLEN": 1000,
        "IFLA_LINKINFO": {"IFLA_INFO_KIND": "vxlan", "IFLA_INFO_DATA": {"IFLA_VXLAN_ID": 1}},
    }
    assert set(attrs) == set(LINK.attrs.by_name)
    _, body = payload(LINK.encode(RTM_NEWLINK, 0, 1, {"index": 4}, attrs))
    back = LINK.decode(body)
    info = back.attrs.pop("IFLA_LINKINFO")
    assert back.attrs == {k: v for k, v in attrs.items() if k != "IFLA_LINKINFO"}
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    assert info.get_attr("IFLA_INFO_DATA").attrs == {"IFLA_VXLAN_ID": 1}
    assert set(VXLAN.by_name) >= set(Vxlan(1, None).data())  # Vxlan sends only rows we read


def test_a_malformed_attribute_reads_as_absent_and_unknown_ones_are_skipped():
    table = Attrs(
        (1, "A", ROUTE.attrs.by_name["RTA_DST"][1]), (2, "B", ROUTE.attrs.by_name["RTA_OIF"][1])
    )
    raw = codec.attr(1, b"\x0a\x01\x02") + codec.attr(2, struct.pack("=I", 9)) + codec.attr(3, b"x")
    assert table.decode(memoryview(raw)).attrs == {"B": 9}
