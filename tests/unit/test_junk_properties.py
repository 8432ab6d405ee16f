"""Property tests: no input from etcd (keys, values, configs, backend data, event sequences)
can crash the daemon's pure logic, and junk never removes peers or creates routes outside
the network."""

import json
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.backend.plan import PeerDataError
from pyflannel.backend.udp.peer import udp_peer
from pyflannel.backend.vxlan.peer import vxlan_peer
from pyflannel.errors import ConfigError
from pyflannel.etcd.client import KeyValue
from pyflannel.etcd.store import EtcdSubnetManager
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.event import EventKind, LeaseEvent
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.table import LeaseTable

NET = IPv4Network("10.1.0.0/16")
OWN = IPv4Network("10.1.1.0/24")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Keys that look like subnet keys, nearly, and not at all.
almost_keys = st.one_of(
    st.builds(
        lambda a, b, c, d, n: f"/p/subnets/{a}.{b}.{c}.{d}-{n}",
        *[st.integers(-5, 300)] * 4,
        st.integers(-3, 40),
    ),
    st.text(max_size=40).map(lambda t: f"/p/subnets/{t}"),
    st.sampled_from(
        [
            "/p/subnets/10.1.2.0-24",
            "/p/subnets/10.1.3.0-24",
            "/p/subnets/10.2.0.0-24",
            "/p/subnets/10.1.0.0-16",
            "/p/subnets/10.1.1.0-24",
            "/p/subnets/10.1.2.0-24&fd00::-64",
        ]
    ),
)
values = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.builds(
        lambda ip, bt, data: json.dumps(
            {"PublicIP": ip, "BackendType": bt, "BackendData": data}
        ).encode(),
        st.sampled_from(["198.51.100.2", "0.0.0.0", "1.2.3", 7, None]),
        st.sampled_from(["vxlan", "udp", "", 3]),
        json_values,
    ),
)
store = EtcdSubnetManager(client=None, prefix="/p")  # type: ignore[arg-type]


@given(almost_keys, values, st.sampled_from(["put", "delete"]))
@settings(max_examples=400)
def test_decoding_any_key_and_value_never_raises(key, value, kind):
    event = store._decode(EventKind(kind), KeyValue(key.encode(), value, 5, 5, 1, 0))
    assert event.lease is None or event.subnet is not None
    if event.lease is None and kind == "put":
        assert event.problem


@given(json_values)
@settings(max_examples=300)
def test_any_config_json_is_a_config_or_a_config_error(doc):
    try:
        parse_network_config(json.dumps(doc))
    except ConfigError:
        pass


@given(json_values, st.sampled_from(["vxlan", "udp", "", "host-gw"]))
@settings(max_examples=300)
def test_any_backend_data_is_a_peer_or_a_peer_data_error(data, backend):
    lease = Lease(
        IPv4Network("10.1.2.0/24"), LeaseAttrs(IPv4Address("198.51.100.2"), None, backend, data)
    )
    for make in (vxlan_peer, lambda le: udp_peer(le, 8285)):
        try:
            make(lease)
        except PeerDataError:
            pass


def good(subnet: str) -> LeaseEvent:
    le = Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address("198.51.100.9"), backend_type="vxlan"))
    return LeaseEvent(EventKind.PUT, le.key, le.subnet, lease=le)


@given(st.lists(st.tuples(almost_keys, values, st.sampled_from(["put", "delete"])), max_size=30))
@settings(max_examples=300)
def test_junk_never_removes_a_peer_nor_makes_one_outside_the_network(batch):
    table = LeaseTable(NET, OWN, own_ip=IPv4Address("198.51.100.1"))
    table.reset([])
    table.apply([good("10.1.7.0/24"), good("10.1.8.0/24")])
    events = [
        store._decode(EventKind(kind), KeyValue(k.encode(), v, 9, 9, 1, 0)) for k, v, kind in batch
    ]
    junk = [e for e in events if e.subnet is None or (e.kind == "put" and e.lease is None)]
    changes = table.apply(junk)
    assert not changes.removed
    assert {str(p.subnet) for p in table.peers()} == {"10.1.7.0/24", "10.1.8.0/24"}
    table.apply(events)  # everything, valid-looking leases included
    for peer in table.peers():
        assert peer.subnet.subnet_of(NET) and peer.subnet.prefixlen > NET.prefixlen
        assert not peer.subnet.overlaps(OWN)
        assert peer.attrs.public_ip != IPv4Address("198.51.100.1")
