"""Whose lease is it? Telling this node's own lease from another node's with the same public IP.

Upstream reuses any lease that carries the node's public IP. Cloned VMs and Vagrant boxes
(every VirtualBox NAT interface is 10.0.2.15; upstream issue #98) share one public IP, so the
second node silently takes the first one's subnet and both hold it. pyflannel takes a lease of
its public IP only if it is plausibly its own:

- it was granted by this node: its ``grantor`` is this node's fingerprint, a hash of the
  machine ID and the external interface's hardware address. The store records it (etcd: in
  the IDs of the etcd leases pyflannel grants, which etcd lets a client choose). This
  survives reboots and works for every backend, with no change to the lease JSON
  (upstream-identical);
- or its VtepMAC is this node's VXLAN device (an existing device kept across a restart, also
  one written by upstream flanneld on this node before a migration);
- or the subnet file names it (a restart, or a migration from upstream on this node);
- or it is a reservation (no etcd lease: an operator bound that subnet to that IP).

Anything else is another node's, and the answer is a clear error, never two owners. Pure, but
for ``node_fingerprint``, which reads the machine ID.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.errors import FlannelError
from pyflannel.subnet.lease import Lease, LeaseAttrs

FINGERPRINT_BITS = 40  # fits an etcd lease ID (a positive int64) with 23 random bits
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


class LeaseConflict(FlannelError):
    """Another node advertises this node's public IP: sharing its subnet would break both."""


@dataclass(frozen=True)
class NodeIdentity:
    fingerprint: int  # FINGERPRINT_BITS bits
    vtep_mac: str = ""  # this node's VXLAN device MAC, if its backend has one
    previous: IPv4Network | None = None  # the subnet the subnet file names


def node_fingerprint(hardware_address: str, machine_id_files=MACHINE_ID_FILES) -> int:
    """Stable across reboots, different for clones that got new NIC addresses (and for the
    namespaces of the test bed, which share the machine ID but not their MACs)."""
    machine_id = ""
    for path in machine_id_files:
        try:
            machine_id = Path(path).read_text().strip()
            break
        except OSError:
            continue
    digest = hashlib.sha256(f"{machine_id}/{hardware_address.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - FINGERPRINT_BITS)


def granted_by(lease: Lease, fingerprint: int) -> bool:
    return lease.grantor is not None and lease.grantor == fingerprint


def vtep_mac_of(attrs: LeaseAttrs) -> str:
    """The VtepMAC a lease's attributes advertise, lower case ("" if none)."""
    data = attrs.backend_data
    if not isinstance(data, dict):
        return ""
    mac = {str(k).lower(): v for k, v in data.items()}.get("vtepmac")
    return mac.lower() if isinstance(mac, str) else ""


def is_own_lease(lease: Lease, me: NodeIdentity) -> bool:
    """Is a lease carrying this node's public IP plausibly this node's own?"""
    return (
        lease.reservation
        or granted_by(lease, me.fingerprint)
        or (bool(me.vtep_mac) and vtep_mac_of(lease.attrs) == me.vtep_mac.lower())
        or lease.subnet == me.previous
    )


def conflict_message(
    lease: Lease, removal: str, holder: str = "", *, taken_from_us: bool = False
) -> str:
    """The error an operator acts on: who the other node is (``holder``: what the store adds,
    e.g. its etcd lease), and the fixes (``removal``: the command that deletes the lease)."""
    ip = lease.attrs.public_ip
    mac = vtep_mac_of(lease.attrs)
    other = f"VTEP MAC {mac}" if mac else f"backend {lease.attrs.backend_type or 'udp'}"
    other += f", {holder}" if holder else ""
    if taken_from_us:
        head = (
            f"PUBLIC IP CONFLICT: this node's lease {lease.subnet} was rewritten by another "
            f"node with the same public IP {ip} ({other}); two nodes cannot share a subnet, "
            "so this node stops claiming it."
        )
    else:
        head = (
            f"PUBLIC IP CONFLICT: public IP {ip} is already advertised by lease {lease.subnet} "
            f"of another node ({other}); taking it would give two nodes one subnet."
        )
    return (
        f"{head} Give each node its own address with --public-ip or --iface (cloned VMs and "
        "Vagrant boxes often share one, e.g. 10.0.2.15). If that lease is this node's own "
        f"from before (e.g. after replacing its network card), delete it: {removal}"
    )
