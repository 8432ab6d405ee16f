"""Device and address requests (kernel/device_codec.py) and the decoder (kernel/message.py):
pyroute2's independent decoder reads our requests as we meant them, and we read its encodings
of the kernel's answers and notifications as it does."""

import struct

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.kernel import codec
from pyflannel.kernel import device_codec as d
from pyflannel.kernel.message import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    decode,
)
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
    data = d.vxlan_data(vni=1, local="198.51.100.1", link=2, learning=False, port=8472, gbp=True)
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
    data = d.vxlan_data(vni=1, local="fd00::1", link=0, learning=True)
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
    assert address.get_attr("IFA_ADDRESS") == "198.51.100.1"
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
    assert (route.get_attr("RTA_DST"), route.get_attr("RTA_OIF")) == ("10.1.2.0", 4)
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
        "198.51.100.2",
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
