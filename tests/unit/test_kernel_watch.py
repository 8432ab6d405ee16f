"""Which netlink notifications are damage to this network's objects (kernel_watch.is_damage)."""

from ipaddress import IPv4Network

from pyflannel.kernel.watch import Watched, is_damage


class Msg(dict):
    """Enough of a pyroute2 message: fields by key, attributes by get_attr."""

    def __init__(self, attrs=None, **fields):
        super().__init__(fields)
        self.attrs = attrs or {}

    def get_attr(self, name):
        return self.attrs.get(name)


WATCHED = Watched(frozenset({"flannel.1"}), frozenset({7}), 2, (IPv4Network("10.1.0.0/16"),))


def route_deleted(dst, length, proto=152):
    return Msg({"RTA_DST": dst}, event="RTM_DELROUTE", proto=proto, dst_len=length)


def test_our_networks_route_deleted_is_damage():
    assert is_damage(route_deleted("10.1.5.0", 24), WATCHED) == (
        "route",
        "10.1.5.0/24",
        "route 10.1.5.0/24 deleted",
    )


def test_another_networks_route_with_our_protocol_is_not():
    assert is_damage(route_deleted("10.2.0.0", 16), WATCHED) is None
    assert is_damage(route_deleted("10.1.5.0", 24, proto=4), WATCHED) is None


def test_our_device_deleted_and_an_unknown_one_ignored():
    gone = Msg({"IFLA_IFNAME": "flannel.1"}, event="RTM_DELLINK", flags=0)
    other = Msg({"IFLA_IFNAME": "flannel.2"}, event="RTM_DELLINK", flags=0)
    assert is_damage(gone, WATCHED)[0] == "device"
    assert is_damage(other, WATCHED) is None


def test_an_ipv6_route_of_a_dual_stack_network_is_damage_and_spelled_as_the_reconciler_does():
    from ipaddress import IPv6Network

    watched = Watched(
        frozenset({"flannel.1", "flannel-v6.1"}),
        frozenset({7, 8}),
        2,
        (IPv4Network("10.1.0.0/16"), IPv6Network("fd10::/48")),
    )
    msg = Msg({"RTA_DST": "fd10:0:0:5::"}, event="RTM_DELROUTE", proto=152, dst_len=64, family=10)
    assert is_damage(msg, watched) == (
        "route",
        "fd10:0:0:5::/64",
        "route fd10:0:0:5::/64 deleted",
    )
    other = Msg({"RTA_DST": "fd20::"}, event="RTM_DELROUTE", proto=152, dst_len=64, family=10)
    assert is_damage(other, watched) is None
    assert is_damage(other, WATCHED) is None  # an IPv4-only network owns no IPv6 route
    neigh = Msg({"NDA_DST": "fd10:0:0:5::"}, event="RTM_DELNEIGH", ifindex=8, family=10)
    assert is_damage(neigh, watched) == (
        "neigh",
        "fd10:0:0:5::",
        "neighbour entry fd10:0:0:5:: deleted",
    )
