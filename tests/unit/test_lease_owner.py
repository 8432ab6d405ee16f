"""Telling this node's lease from another node's with the same public IP (subnet/owner.py)."""

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.etcd.store import grantor_of, lease_id_for
from pyflannel.subnet.allocate import choose_subnet
from pyflannel.subnet.config import parse_network_config
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.owner import (
    NodeIdentity,
    conflict_message,
    granted_by,
    is_own_lease,
    node_fingerprint,
)

CFG = parse_network_config(b'{"Network": "10.1.0.0/16"}')
IP = IPv4Address("10.0.2.15")
ME = NodeIdentity(0xABCDE12345, vtep_mac="02:00:00:00:00:01")


def lease(
    subnet="10.1.64.0/24", mac="02:00:00:00:00:02", grantor=0x694D7F2A1B, reservation=False
) -> Lease:
    attrs = LeaseAttrs(IP, backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac})
    return Lease(IPv4Network(subnet), attrs, grantor=grantor, reservation=reservation)


def test_etcd_lease_ids_carry_the_fingerprint_and_are_positive_int64():
    ids = {lease_id_for(ME.fingerprint, random.Random(seed)) for seed in range(50)}
    assert len(ids) == 50
    assert all(0 < i < 2**63 for i in ids)
    assert all(granted_by(lease(grantor=grantor_of(i)), ME.fingerprint) for i in ids)
    other = grantor_of(0x694D7F2A1B3C0001)  # an ID etcd chose itself
    assert not granted_by(lease(grantor=other), ME.fingerprint)
    assert grantor_of(0) is None  # a reservation: no etcd lease


def test_fingerprint_is_stable_and_differs_by_hardware_address(tmp_path):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef\n")
    a = node_fingerprint("02:aa:bb:cc:dd:01", [machine_id])
    assert a == node_fingerprint("02:AA:BB:CC:DD:01", [machine_id])
    assert a != node_fingerprint("02:aa:bb:cc:dd:02", [machine_id])
    assert 0 <= a < 2**40


@pytest.mark.parametrize(
    "other, ours",
    [
        (lease(), False),  # another node's MAC, granted by another node
        (lease(mac="02:00:00:00:00:01"), True),  # our device (kept across a restart)
        (lease(grantor=ME.fingerprint), True),  # granted by us (e.g. before a reboot)
        (lease(grantor=None, reservation=True), True),  # a reservation for our IP
    ],
)
def test_own_lease_by_fingerprint_mac_or_reservation(other, ours):
    assert is_own_lease(other, ME) is ours


def test_the_subnet_file_names_our_own():
    me = NodeIdentity(1, previous=IPv4Network("10.1.64.0/24"))
    assert is_own_lease(lease(), me)


def test_another_nodes_lease_of_our_ip_is_a_conflict_not_a_reuse():
    claim = choose_subnet(CFG, [lease()], IP, identity=ME)
    assert claim.reason == "conflict" and claim.existing == lease()
    # Upstream's rule (no identity): reuse.
    assert choose_subnet(CFG, [lease()], IP).reason == "reuse"


def test_our_own_lease_is_reused_even_beside_a_clones():
    mine = lease("10.1.70.0/24", mac="02:00:00:00:00:01")
    claim = choose_subnet(CFG, [lease(), mine], IP, identity=ME)
    assert (claim.reason, claim.subnet) == ("reuse", mine.subnet)


def test_the_conflict_message_names_the_other_node_and_the_fixes():
    text = conflict_message(
        lease(), "etcdctl del /coreos.com/network/subnets/10.1.64.0-24", "etcd lease 3f2a"
    )
    assert "VTEP MAC 02:00:00:00:00:02, etcd lease 3f2a" in text
    assert "--public-ip or --iface" in text
    assert "etcdctl del /coreos.com/network/subnets/10.1.64.0-24" in text
